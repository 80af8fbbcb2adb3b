//! Hostile RPCs: random, malformed and oversized requests get the right status codes, and the
//! daemon keeps serving.

use super::*;

const ALLOWED: [Code; 6] = [
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::PermissionDenied,
    Code::OutOfRange,
    Code::ResourceExhausted,
];

/// One random request.
#[derive(Clone)]
enum Req {
    Watch(pb::WatchRequest),
    Unwatch(pb::UnwatchRequest),
    Save(pb::SaveRequest),
    List(pb::ListRequest),
    Get(pb::GetRequest),
    Diff(pb::DiffRequest),
    Restore(pb::RestoreRequest),
    ReadFile(pb::ReadFileRequest),
    Log(pb::LogRequest),
    Delete(pb::DeleteRequest),
    Pin(pb::PinRequest),
    Unpin(pb::PinRequest),
    Prune(pb::PruneRequest),
    Verify(pb::VerifyRequest),
    Acknowledge(pb::AcknowledgeRequest),
}

/// Shortens runs of one repeated character (the 1 MiB fields) and long output.
fn shorten(text: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let mut j = i;
        while j < chars.len() && chars[j] == chars[i] {
            j += 1;
        }
        if j - i > 16 {
            out.push_str(&format!("{}…(×{})", chars[i], j - i));
        } else {
            out.extend(&chars[i..j]);
        }
        i = j;
    }
    if out.len() > 1500 {
        let mut cut = 1500;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

impl fmt::Debug for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Req::Watch(m) => format!("Watch({m:?})"),
            Req::Unwatch(m) => format!("Unwatch({m:?})"),
            Req::Save(m) => format!("Save({m:?})"),
            Req::List(m) => format!("List({m:?})"),
            Req::Get(m) => format!("Get({m:?})"),
            Req::Diff(m) => format!("Diff({m:?})"),
            Req::Restore(m) => {
                let paths: Vec<String> = m
                    .paths
                    .iter()
                    .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
                    .collect();
                format!(
                    "Restore {{ workspace: {:?}, snapshot: {:?}, paths: [{}], dry_run: {}, to: {:?} }}",
                    m.workspace,
                    m.snapshot,
                    paths.join(", "),
                    m.dry_run,
                    m.to
                )
            }
            Req::ReadFile(m) => format!(
                "ReadFile {{ workspace: {:?}, snapshot: {:?}, path: {:?} }}",
                m.workspace,
                m.snapshot,
                String::from_utf8_lossy(&m.path)
            ),
            Req::Log(m) => format!(
                "Log {{ workspace: {:?}, path: {:?}, limit: {} }}",
                m.workspace,
                String::from_utf8_lossy(&m.path),
                m.limit
            ),
            Req::Delete(m) => format!("Delete({m:?})"),
            Req::Pin(m) => format!("Pin({m:?})"),
            Req::Unpin(m) => format!("Unpin({m:?})"),
            Req::Prune(m) => format!("Prune({m:?})"),
            Req::Verify(m) => format!("Verify({m:?})"),
            Req::Acknowledge(m) => format!("Acknowledge({m:?})"),
        };
        f.write_str(&shorten(&text))
    }
}

impl Req {
    fn name(&self) -> &'static str {
        match self {
            Req::Watch(_) => "Watch",
            Req::Unwatch(_) => "Unwatch",
            Req::Save(_) => "Save",
            Req::List(_) => "List",
            Req::Get(_) => "Get",
            Req::Diff(_) => "Diff",
            Req::Restore(_) => "Restore",
            Req::ReadFile(_) => "ReadFile",
            Req::Log(_) => "Log",
            Req::Delete(_) => "Delete",
            Req::Pin(_) => "Pin",
            Req::Unpin(_) => "Unpin",
            Req::Prune(_) => "Prune",
            Req::Verify(_) => "Verify",
            Req::Acknowledge(_) => "Acknowledge",
        }
    }

    /// Sends it; Ok or the status (streams are read to their end).
    async fn send(self, c: &mut Client) -> Result<(), tonic::Status> {
        match self {
            Req::Watch(m) => c.watch(m).await.map(drop),
            Req::Unwatch(m) => c.unwatch(m).await.map(drop),
            Req::Save(m) => c.save(m).await.map(drop),
            Req::List(m) => c.list(m).await.map(drop),
            Req::Get(m) => c.get(m).await.map(drop),
            Req::Diff(m) => c.diff(m).await.map(drop),
            Req::Restore(m) => restore(c, m).await.map(drop),
            Req::ReadFile(m) => cat(c, &m.workspace, &m.snapshot, &m.path).await.map(drop),
            Req::Log(m) => c.log(m).await.map(drop),
            Req::Delete(m) => c.delete(m).await.map(drop),
            Req::Pin(m) => c.pin(m).await.map(drop),
            Req::Unpin(m) => c.unpin(m).await.map(drop),
            Req::Prune(m) => c.prune(m).await.map(drop),
            Req::Verify(m) => c.verify(m).await.map(drop),
            Req::Acknowledge(m) => c.acknowledge(m).await.map(drop),
        }
    }
}

/// The places random requests may name. Everything that could be written to is a temp dir.
#[derive(Clone)]
struct Places {
    /// Workspace-ish strings: the real workspace, inside it, outside, invalid, oversized.
    workspaces: Vec<String>,
    /// Folders it is safe to watch (small, in the sandbox) and invalid ones.
    watchable: Vec<String>,
    /// Restore targets: in place, in the sandbox, the data dir, invalid.
    tos: Vec<String>,
    /// Snapshot selectors.
    selectors: Vec<String>,
    /// Paths inside a workspace, hostile or not.
    paths: Vec<Vec<u8>>,
    sandbox: String,
    big: String,
}

fn big_string() -> String {
    "a".repeat(1 << 20)
}

fn strings(v: &[String]) -> BoxedStrategy<String> {
    select(v.to_vec()).boxed()
}

fn workspace_strategy(p: &Places) -> BoxedStrategy<String> {
    prop_oneof![
        6 => strings(&p.workspaces),
        1 => "[a-z/.]{0,20}",
        1 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| format!("/{}", String::from_utf8_lossy(&b))),
    ]
    .boxed()
}

fn selector_strategy(p: &Places) -> BoxedStrategy<String> {
    let units = vec!['s', 'm', 'h', 'd', 'w', 'y', 'x'];
    prop_oneof![
        6 => strings(&p.selectors),
        1 => any::<u64>().prop_map(|n| format!("latest~{n}")),
        1 => (any::<u64>(), select(units)).prop_map(|(n, u)| format!("@{n}{u}")),
        1 => (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>())
            .prop_map(|(y, m, d, h, mi)| format!("@{y}-{m}-{d}T{h}:{mi}")),
        1 => "[0-9a-fA-F]{1,18}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn path_strategy(p: &Places) -> BoxedStrategy<Vec<u8>> {
    let parts: Vec<&'static [u8]> = vec![
        b"..", b".", b"a.txt", b"sub", b"link", b"", b"b.txt", b"\0", b"evil", b".git",
    ];
    prop_oneof![
        6 => select(p.paths.clone()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(select(parts), 1..6).prop_map(|v| v.join(&b'/')),
    ]
    .boxed()
}

fn to_strategy(p: &Places) -> BoxedStrategy<String> {
    let sandbox = p.sandbox.clone();
    prop_oneof![
        3 => Just(String::new()),
        3 => strings(&p.tos),
        2 => (0..6u32).prop_map(move |n| format!("{sandbox}/out/o{n}")),
    ]
    .boxed()
}

fn request_strategy(p: &Places) -> BoxedStrategy<Req> {
    let ws = || workspace_strategy(p);
    let sel = || selector_strategy(p);
    let path = || path_strategy(p);
    let big = p.big.clone();
    let message = prop_oneof![
        3 => "[ -~]{0,40}",
        1 => Just(big),
    ];
    let millis = || prop_oneof![Just(0u64), 1..5000u64, any::<u64>()];
    let small = || prop_oneof![Just(0u32), 1..5u32, any::<u32>()];
    let retention = proptest::option::of(
        (
            small(),
            small(),
            small(),
            small(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(
                    keep_last,
                    keep_hourly,
                    keep_daily,
                    keep_weekly,
                    keep_within_secs,
                    max_store_bytes,
                )| {
                    pb::RetentionPolicy {
                        keep_last,
                        keep_hourly,
                        keep_daily,
                        keep_weekly,
                        keep_within_secs,
                        max_store_bytes,
                    }
                },
            ),
    );
    let watch = (
        strings(&p.watchable),
        millis(),
        millis(),
        any::<bool>(),
        retention,
    )
        .prop_map(
            |(path, idle_ms, max_delay_ms, include_dependency_dirs, retention)| {
                Req::Watch(pb::WatchRequest {
                    path,
                    idle_ms,
                    max_delay_ms,
                    include_dependency_dirs,
                    retention,
                    include_git: false,
                })
            },
        );
    let arms: Vec<BoxedStrategy<Req>> = vec![
        watch.boxed(),
        ws().prop_map(|path| Req::Unwatch(pb::UnwatchRequest { path }))
            .boxed(),
        (ws(), message, any::<bool>())
            .prop_map(|(workspace, message, pin)| {
                Req::Save(pb::SaveRequest {
                    workspace,
                    message,
                    pin,
                    ..Default::default()
                })
            })
            .boxed(),
        (
            ws(),
            small(),
            prop_oneof![
                Just(String::new()),
                "[0-9]{1,25}",
                "-?[0-9a-z]{0,8}",
                any::<String>()
            ],
            any::<bool>(),
        )
            .prop_map(|(workspace, limit, page_token, all)| {
                Req::List(pb::ListRequest {
                    workspace,
                    limit,
                    page_token,
                    all,
                    ..Default::default()
                })
            })
            .boxed(),
        (ws(), sel())
            .prop_map(|(workspace, snapshot)| {
                Req::Get(pb::GetRequest {
                    workspace,
                    snapshot,
                })
            })
            .boxed(),
        (
            ws(),
            sel(),
            prop_oneof![2 => Just(String::new()), 1 => sel()],
        )
            .prop_map(|(workspace, from, to)| {
                Req::Diff(pb::DiffRequest {
                    workspace,
                    from,
                    to,
                    ..Default::default()
                })
            })
            .boxed(),
        (
            ws(),
            sel(),
            proptest::collection::vec(path(), 0..3),
            any::<bool>(),
            to_strategy(p),
        )
            .prop_map(|(workspace, snapshot, paths, dry_run, to)| {
                Req::Restore(pb::RestoreRequest {
                    workspace,
                    snapshot,
                    paths,
                    dry_run,
                    to,
                    include_git: false,
                    force: false,
                })
            })
            .boxed(),
        (ws(), sel(), path())
            .prop_map(|(workspace, snapshot, path)| {
                Req::ReadFile(pb::ReadFileRequest {
                    workspace,
                    snapshot,
                    path,
                    ..Default::default()
                })
            })
            .boxed(),
        (ws(), path(), small())
            .prop_map(|(workspace, path, limit)| {
                Req::Log(pb::LogRequest {
                    workspace,
                    path,
                    limit,
                    ..Default::default()
                })
            })
            .boxed(),
        (ws(), proptest::collection::vec(sel(), 0..3))
            .prop_map(|(workspace, snapshots)| {
                Req::Delete(pb::DeleteRequest {
                    workspace,
                    snapshots,
                    force: false,
                })
            })
            .boxed(),
        (ws(), sel())
            .prop_map(|(workspace, snapshot)| {
                Req::Pin(pb::PinRequest {
                    workspace,
                    snapshot,
                })
            })
            .boxed(),
        (ws(), sel())
            .prop_map(|(workspace, snapshot)| {
                Req::Unpin(pb::PinRequest {
                    workspace,
                    snapshot,
                })
            })
            .boxed(),
        (
            ws(),
            any::<bool>(),
            (small(), small(), small(), small()),
            prop_oneof![Just(0u64), 1..100_000u64, any::<u64>()],
        )
            .prop_map(|(workspace, dry_run, (a, b, c, d), keep_within_secs)| {
                Req::Prune(pb::PruneRequest {
                    workspace,
                    dry_run,
                    keep_last: a,
                    keep_hourly: b,
                    keep_daily: c,
                    keep_weekly: d,
                    keep_within_secs,
                })
            })
            .boxed(),
        prop_oneof![Just(String::new()), ws()]
            .prop_map(|workspace| Req::Verify(pb::VerifyRequest { workspace }))
            .boxed(),
        ws().prop_map(|workspace| Req::Acknowledge(pb::AcknowledgeRequest { workspace }))
            .boxed(),
    ];
    Union::new(arms).boxed()
}

#[derive(Default)]
struct HostileStats {
    requests: u64,
    ok: u64,
    codes: BTreeMap<String, u64>,
    per_rpc: BTreeMap<&'static str, u64>,
    latencies: Vec<Duration>,
    bad: Vec<String>,
}

#[test]
fn hostile_rpcs_get_correct_codes_and_the_daemon_keeps_serving() {
    let cases = if full() { 1000 } else { 64 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = Daemon::start(&[]);
    let mut c = rt.block_on(d.client());

    // The real workspace, with a few snapshots.
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    fs::write(ws.join("a.txt"), b"alpha").unwrap();
    fs::create_dir(ws.join("sub")).unwrap();
    fs::write(ws.join("sub/b.txt"), b"beta").unwrap();
    std::os::unix::fs::symlink("a.txt", ws.join("link")).unwrap();
    let baseline = rt.block_on(watch(&mut c, &ws, 300, 5000)).baseline.unwrap();
    for i in 0..3 {
        fs::write(ws.join("a.txt"), format!("alpha {i}")).unwrap();
        rt.block_on(c.save(pb::SaveRequest {
            workspace: s(&ws),
            message: format!("save {i}"),
            pin: false,
            ..Default::default()
        }))
        .unwrap();
    }

    // The sandbox: small folders that may be watched and restored into.
    let sandbox_dir = tempfile::tempdir().unwrap();
    let sb = sandbox_dir.path().canonicalize().unwrap();
    for w in ["w0", "w1", "w2"] {
        fs::create_dir_all(sb.join(w).join("d")).unwrap();
        fs::write(sb.join(w).join("f.txt"), w).unwrap();
        fs::write(sb.join(w).join("d/g.txt"), w).unwrap();
    }
    fs::write(sb.join("file.txt"), b"not a dir").unwrap();
    fs::create_dir(sb.join("out")).unwrap();
    let data = d.data.canonicalize().unwrap();
    let big = big_string();
    let sbs = s(&sb);
    let wss = s(&ws);
    let places = Places {
        workspaces: vec![
            wss.clone(),
            wss.clone(),
            wss.clone(),
            format!("{wss}/sub"),
            format!("{wss}/a.txt"),
            format!("{wss}/../.."),
            format!("{wss}/nope/deeper"),
            format!("{wss}\0x"),
            format!("{sbs}/w0"),
            format!("{sbs}/w1"),
            String::new(),
            "relative/zz".into(),
            "/".into(),
            "/nonexistent/chkpt/zz".into(),
            s(&data),
            format!("/{big}"),
            big.clone(),
            format!("{wss}/{big}"),
        ],
        watchable: vec![
            format!("{sbs}/w0"),
            format!("{sbs}/w1"),
            format!("{sbs}/w2"),
            format!("{sbs}/w0/../w1"),
            format!("{sbs}/w0/d"),
            format!("{sbs}/nonexistent"),
            format!("{sbs}/file.txt"),
            format!("{sbs}/w0\0/x"),
            format!("{sbs}/{big}"),
            format!("{sbs}/{}", "d/".repeat(3000)),
            String::new(),
            "relative/zz".into(),
            big.clone(),
            s(&data),
            format!("{}/catalog", s(&data)),
        ],
        tos: vec![
            format!("{sbs}/out/fixed"),
            format!("{sbs}/file.txt"),
            format!("{sbs}/file.txt/below"),
            format!("{sbs}/out/../out/dots"),
            format!("{sbs}/out/x\0y"),
            format!("{sbs}/{big}"),
            format!("{wss}/restored-inside"),
            s(&data),
            format!("{}/sub", s(&data)),
            "relative/out".into(),
            "..".into(),
        ],
        selectors: vec![
            String::new(),
            "latest".into(),
            "latest~0".into(),
            "latest~1".into(),
            "latest~99999".into(),
            "latest~18446744073709551615".into(),
            "latest~-1".into(),
            "latest~".into(),
            "zz".into(),
            "@bogus".into(),
            "@".into(),
            "@10m".into(),
            "@0s".into(),
            "@18446744073709551615m".into(),
            "@99999999999999s".into(),
            "@999999-01-01T00:00".into(),
            "@2026-13-45T99:99".into(),
            "@-2147483648-01-01T00:00".into(),
            "ffffffffffffffff".into(),
            "0".into(),
            "00000000000000000".into(),
            baseline.id.clone(),
            baseline.id[..4].to_owned(),
            big.clone(),
        ],
        paths: vec![
            Vec::new(),
            b"a.txt".to_vec(),
            b"sub/b.txt".to_vec(),
            b"sub".to_vec(),
            b"link".to_vec(),
            b"link/evil".to_vec(),
            b"../x".to_vec(),
            b"../../etc/passwd".to_vec(),
            b"/etc/passwd".to_vec(),
            b"a\0b".to_vec(),
            b"./a.txt".to_vec(),
            b"sub/../../x".to_vec(),
            b"//".to_vec(),
            format!("{wss}/a.txt").into_bytes(),
            format!("{wss}/../x").into_bytes(),
            big.clone().into_bytes(),
        ],
        sandbox: sbs.clone(),
        big: big.clone(),
    };

    let strategy = proptest::collection::vec(request_strategy(&places), 1..4);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    });
    // CHKPT_KEEP_GOING=1: list every bad answer instead of stopping (and shrinking) at the first.
    let keep_going = std::env::var("CHKPT_KEEP_GOING").is_ok_and(|v| v == "1");
    let stats = RefCell::new(HostileStats::default());
    let started = Instant::now();
    let socket = d.socket.clone();
    let result = runner.run(&strategy, |reqs| {
        // One connection per case; after each request it must still carry a Status call (a
        // reply the client cannot take, e.g. an oversized trailer, resets the connection).
        let mut client = rt.block_on(util::connect(&socket));
        for req in reqs {
            let name = req.name();
            let shown = format!("{req:?}");
            let t = Instant::now();
            let res = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), req.send(&mut client)).await
            });
            let took = t.elapsed();
            let alive = rt.block_on(client.status(pb::StatusRequest {}));
            let mut st = stats.borrow_mut();
            st.requests += 1;
            *st.per_rpc.entry(name).or_default() += 1;
            st.latencies.push(took);
            let verdict = match res {
                Err(_) => Err(format!("no answer within 60 s to {shown}")),
                Ok(Ok(())) => {
                    st.ok += 1;
                    Ok(())
                }
                Ok(Err(status)) => {
                    *st.codes.entry(format!("{:?}", status.code())).or_default() += 1;
                    // The client library reports transport failures with codes of its own.
                    let transport = status.message().contains("protocol error")
                        || std::error::Error::source(&status).is_some();
                    if ALLOWED.contains(&status.code()) && !transport {
                        Ok(())
                    } else {
                        Err(format!(
                            "{:?} ({}) for {shown}",
                            status.code(),
                            shorten(status.message())
                        ))
                    }
                }
            };
            let verdict = verdict.and_then(|()| match alive {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "the connection failed ({:?}: {}) after {shown}",
                    e.code(),
                    e.message()
                )),
            });
            if let Err(e) = verdict {
                st.bad.push(e.clone());
                if !keep_going {
                    return Err(TestCaseError::fail(e));
                }
                client = rt.block_on(util::connect(&socket));
            }
        }
        Ok(())
    });
    let elapsed = started.elapsed();

    // Still serving: Status, and a real save of a freshly watched workspace.
    let after = rt.block_on(async {
        let mut c = d.client().await;
        c.status(pb::StatusRequest {}).await.map(drop)?;
        let fresh = tempfile::tempdir().unwrap();
        fs::write(fresh.path().join("x.txt"), b"one").unwrap();
        watch(&mut c, fresh.path(), 3_600_000, 3_600_000).await;
        fs::write(fresh.path().join("x.txt"), b"two, after the storm").unwrap();
        let saved = c
            .save(pb::SaveRequest {
                workspace: s(fresh.path()),
                message: "after".into(),
                pin: false,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(saved.created, "the save after the storm created nothing");
        let id = saved.snapshot.unwrap().id;
        let got = cat(&mut c, &s(fresh.path()), &id, b"x.txt").await?;
        assert_eq!(got, b"two, after the storm");
        Ok::<_, tonic::Status>(())
    });
    let log = d.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();

    let mut st = stats.into_inner();
    let lat = percentiles(&mut st.latencies);
    println!(
        "figures: hostile_rpcs cases={cases} requests={} ok={} errors={:?} per_rpc={:?} bad={} daemon_panics={} latency {lat} elapsed={:.1}s",
        st.requests,
        st.ok,
        st.codes,
        st.per_rpc,
        st.bad.len(),
        panics.len(),
        elapsed.as_secs_f64()
    );
    for b in &st.bad {
        println!("bad answer: {b}");
    }
    for p in panics.iter().collect::<BTreeSet<_>>() {
        println!("daemon: {}", shorten(p));
    }
    if let Err(e) = result {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<String> = tail.into_iter().rev().map(shorten).collect();
        panic!(
            "{}\ndaemon log tail:\n{}",
            shorten(&e.to_string()),
            tail.join("\n")
        );
    }
    assert!(st.bad.is_empty(), "{} bad answers", st.bad.len());
    after.expect("the daemon stopped serving after the hostile requests");
    assert!(
        panics.is_empty(),
        "the daemon panicked:\n{}",
        panics.join("\n")
    );
}
