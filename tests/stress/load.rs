//! Load: concurrent clients under constant edits.

use super::*;

const OPS: [&str; 5] = ["List", "Status", "Diff", "ReadFile", "Save"];
const KNOWN: &[u8] = b"a file nobody edits\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_under_constant_edits() {
    let (nfiles, secs, clients) = if full() {
        (50_000, 30, 32)
    } else {
        (5_000, 5, 32)
    };
    let d = Daemon::start(&[]);
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    for i in 0..nfiles {
        let dir = ws.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    fs::write(ws.join("known.txt"), KNOWN).unwrap();
    let mut c = d.client().await;
    let t = Instant::now();
    watch(&mut c, &ws, 1000, 10_000).await;
    let baseline_s = t.elapsed().as_secs_f64();

    // The editor: one write every ~20 ms, now and then a new file.
    let stop = Arc::new(AtomicBool::new(false));
    let edits = Arc::new(AtomicU64::new(0));
    let editor = {
        let (stop, edits, ws) = (stop.clone(), edits.clone(), ws.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(7);
            fs::create_dir(ws.join("new")).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let n = edits.fetch_add(1, Ordering::Relaxed);
                if n % 10 == 0 {
                    fs::write(ws.join(format!("new/e{n}.txt")), format!("new {n}")).unwrap();
                } else {
                    let i = rng.index(nfiles);
                    let p = ws.join(format!("d{:03}/f{i}.txt", i / 100));
                    fs::write(p, format!("file {i} edit {n}\n")).unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(secs);
    let lat: Arc<Mutex<HashMap<&'static str, Vec<Duration>>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let saved: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let socket = d.socket.clone();
        let (lat, failures, saved, wss) = (lat.clone(), failures.clone(), saved.clone(), s(&ws));
        tasks.push(tokio::spawn(async move {
            let mut c = util::connect(&socket).await;
            let mut mine: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            let mut k = t;
            while Instant::now() < deadline {
                let op = OPS[k % OPS.len()];
                k += 1;
                let start = Instant::now();
                let res: Result<(), String> = match op {
                    "List" => c
                        .list(pb::ListRequest {
                            workspace: wss.clone(),
                            limit: 20,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    "Status" => c
                        .status(pb::StatusRequest {})
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    "Diff" => c
                        .diff(pb::DiffRequest {
                            workspace: wss.clone(),
                            from: "latest".into(),
                            to: String::new(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    "ReadFile" => match cat(&mut c, &wss, "latest", b"known.txt").await {
                        Ok(b) if b == KNOWN => Ok(()),
                        Ok(b) => Err(format!(
                            "known.txt read back as {:?}",
                            String::from_utf8_lossy(&b)
                        )),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => c
                        .save(pb::SaveRequest {
                            workspace: wss.clone(),
                            message: format!("client {t}"),
                            pin: false,
                            ..Default::default()
                        })
                        .await
                        .map(|r| {
                            saved
                                .lock()
                                .unwrap()
                                .push(r.into_inner().snapshot.unwrap().id);
                        })
                        .map_err(|e| e.to_string()),
                };
                mine.entry(op).or_default().push(start.elapsed());
                if let Err(e) = res {
                    failures.lock().unwrap().push(format!("{op}: {e}"));
                }
            }
            let mut all = lat.lock().unwrap();
            for (op, v) in mine {
                all.entry(op).or_default().extend(v);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    editor.join().unwrap();

    let listed: BTreeSet<String> = snapshots(&mut c, &ws)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    let saved = saved.lock().unwrap().clone();
    let lost: Vec<&String> = saved.iter().filter(|id| !listed.contains(*id)).collect();
    let failures = failures.lock().unwrap().clone();
    let mut lat = lat.lock().unwrap().clone();
    let calls: usize = lat.values().map(Vec::len).sum();
    let mut per_op = Vec::new();
    let mut p99 = HashMap::new();
    for op in OPS {
        let v = lat.entry(op).or_default();
        per_op.push(format!("{op}[{}]", percentiles(v)));
        if !v.is_empty() {
            p99.insert(op, v[((v.len() - 1) as f64 * 0.99).round() as usize]);
        }
    }
    println!(
        "figures: concurrent_clients clients={clients} files={nfiles} secs={secs} baseline={baseline_s:.1}s calls={calls} failures={} edits={} saves={} distinct_saved={} snapshots_listed={} lost={} {}",
        failures.len(),
        edits.load(Ordering::Relaxed),
        saved.len(),
        saved.iter().collect::<BTreeSet<_>>().len(),
        listed.len(),
        lost.len(),
        per_op.join(" ")
    );
    assert!(
        failures.is_empty(),
        "{} failed calls, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lost.is_empty(),
        "saved snapshots missing from List: {lost:?}"
    );
    if full() && !cfg!(debug_assertions) {
        for op in ["List", "Status"] {
            let p = p99[op];
            assert!(p < Duration::from_millis(50), "p99 of {op} is {p:?}");
        }
    }
}
