//! Escaping paths: requests that try to read or write outside a workspace are refused, and
//! nothing is written outside.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_paths_are_refused_and_nothing_is_written_outside() {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().canonicalize().unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    let sandbox_dir = tempfile::tempdir().unwrap();
    let sb = sandbox_dir.path().canonicalize().unwrap();
    let data = d.data.canonicalize().unwrap();
    fs::write(ws.join("a.txt"), b"secret-marker-a").unwrap();
    fs::create_dir(ws.join("sub")).unwrap();
    fs::write(ws.join("sub/evil"), b"secret-marker-evil").unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
    std::os::unix::fs::symlink(&data, sb.join("datalink")).unwrap();
    let passwd = fs::read("/etc/passwd").ok();
    let wss = s(&ws);

    let baseline = watch(&mut c, &ws, 300, 5000).await.baseline.unwrap();
    // A later snapshot where `sub` is a symlink to the outside.
    fs::rename(ws.join("sub"), sb.join("sub-was")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("sub")).unwrap();
    let later = util::save(&mut c, &ws, "sub is a link now").await;

    const REFUSED: [Code; 3] = [
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::NotFound,
    ];
    let mut checks = 0;
    let mut failures = Vec::new();
    fn judge(
        checks: &mut u32,
        failures: &mut Vec<String>,
        what: String,
        res: Result<(), tonic::Status>,
    ) {
        *checks += 1;
        match res {
            Err(e) if REFUSED.contains(&e.code()) => {}
            Err(e) => failures.push(format!("{what}: {:?} {}", e.code(), e.message())),
            Ok(()) => failures.push(format!("{what}: accepted")),
        }
    }
    macro_rules! check {
        ($what:expr, $res:expr $(,)?) => {
            judge(&mut checks, &mut failures, $what, $res)
        };
    }

    // Restore in place with escaping paths, from both snapshots.
    let bad_paths: Vec<Vec<u8>> = vec![
        b"../x".to_vec(),
        b"../../x".to_vec(),
        b"/etc/passwd".to_vec(),
        format!("{}/x", s(&outside)).into_bytes(),
        b"a\0b".to_vec(),
        b"link/evil".to_vec(),
        b"link/../../x".to_vec(),
        b"sub/../../x".to_vec(),
        format!("{wss}/../x").into_bytes(),
    ];
    for snap in [&baseline.id, &later.id] {
        for p in &bad_paths {
            for dry_run in [true, false] {
                let r = restore(
                    &mut c,
                    pb::RestoreRequest {
                        workspace: wss.clone(),
                        snapshot: snap.clone(),
                        paths: vec![p.clone()],
                        dry_run,
                        to: String::new(),
                        include_git: false,
                        force: false,
                    },
                )
                .await;
                check!(
                    format!(
                        "restore {:?} of {snap} dry_run={dry_run}",
                        String::from_utf8_lossy(p)
                    ),
                    r.map(drop),
                );
            }
        }
    }
    // The later snapshot's `sub` is a link: restoring a path below it is refused.
    let r = restore(
        &mut c,
        pb::RestoreRequest {
            workspace: wss.clone(),
            snapshot: later.id.clone(),
            paths: vec![b"sub/evil".to_vec()],
            ..Default::default()
        },
    )
    .await;
    check!(
        "restore sub/evil of the snapshot where sub is a link".into(),
        r.map(drop)
    );
    // The baseline has `sub/evil` under a real `sub`; the workspace's `sub` is now a link to the
    // outside: restoring `sub/evil` must not write through it (refusing or replacing the link
    // are both fine).
    let r = restore(
        &mut c,
        pb::RestoreRequest {
            workspace: wss.clone(),
            snapshot: baseline.id.clone(),
            paths: vec![b"sub/evil".to_vec()],
            ..Default::default()
        },
    )
    .await;
    checks += 1;
    match &r {
        Ok(_) => assert!(
            !fs::symlink_metadata(ws.join("sub"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "restore of sub/evil succeeded but sub is still a link"
        ),
        Err(e) if REFUSED.contains(&e.code()) => {}
        Err(e) => failures.push(format!("restore sub/evil through the link: {e:?}")),
    }

    // ReadFile escapes.
    for p in [
        &b"../../etc/passwd"[..],
        b"/etc/passwd",
        b"link/../../etc/passwd",
        b"link/x",
        b"a\0b",
        b"..",
    ] {
        let r = cat(&mut c, &wss, "latest", p).await;
        check!(
            format!("read_file {:?}", String::from_utf8_lossy(p)),
            r.map(drop)
        );
    }

    // --to inside the data dir (directly, below, through a link, with dots), or relative.
    for to in [
        s(&data),
        format!("{}/sub", s(&data)),
        format!("{}/datalink", s(&sb)),
        format!("{}/datalink/x", s(&sb)),
        format!(
            "{}/../{}/x",
            s(&data),
            data.file_name().unwrap().to_string_lossy()
        ),
        "relative/out".into(),
        format!("{}/x\0y", s(&sb)),
    ] {
        let r = restore(
            &mut c,
            pb::RestoreRequest {
                workspace: wss.clone(),
                snapshot: baseline.id.clone(),
                to: to.clone(),
                ..Default::default()
            },
        )
        .await;
        check!(format!("restore --to {to}"), r.map(drop));
    }

    // Watch of the data dir, below it, through a link to it, relative, NUL.
    for path in [
        s(&data),
        format!("{}/.", s(&data)),
        format!("{}/datalink", s(&sb)),
        "relative".into(),
        format!("{}\0", s(&sb)),
    ] {
        let r = c
            .watch(pb::WatchRequest {
                path: path.clone(),
                ..Default::default()
            })
            .await;
        check!(format!("watch {path:?}"), r.map(drop));
    }
    for entry in fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            let r = c
                .watch(pb::WatchRequest {
                    path: s(&p),
                    ..Default::default()
                })
                .await;
            check!(format!("watch {}", p.display()), r.map(drop));
        }
    }

    // Nothing was written outside, nor into the data dir as plain files.
    let left: Vec<PathBuf> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut leaked = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if fs::read(&p).is_ok_and(|b| b.starts_with(b"secret-marker")) {
                leaked.push(p);
            }
        }
    }
    assert_eq!(fs::read("/etc/passwd").ok(), passwd, "/etc/passwd changed");
    let st = c.status(pb::StatusRequest {}).await;
    println!(
        "figures: escaping_paths checks={checks} failures={} outside_entries={} data_dir_leaks={} daemon_alive={}",
        failures.len(),
        left.len(),
        leaked.len(),
        st.is_ok()
    );
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert!(left.is_empty(), "written outside: {left:?}");
    assert!(
        leaked.is_empty(),
        "workspace files written into the data dir: {leaked:?}"
    );
    st.unwrap();
}
