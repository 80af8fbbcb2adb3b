//! `chkptctl`: the command-line client of chkptd; all of it lives in `chkpt_client`.

fn main() -> std::process::ExitCode {
    chkpt_client::cli::main()
}
