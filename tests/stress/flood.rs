//! Event flood: a burst of writes is captured exactly.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_flood_is_captured_exactly() {
    let n: u64 = if full() { 100_000 } else { 10_000 };
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    watch(&mut c, &ws, 500, 5_000).await;

    let t = Instant::now();
    for i in 0..n {
        let dir = ws.join(format!("a{}/b{}", i / 1000, (i / 100) % 10));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
    }
    let create_s = t.elapsed().as_secs_f64();
    let last_write = now_ms();
    let t = Instant::now();
    let snap = settled_snapshot(&mut c, &ws, last_write.saturating_sub(1), Some(n), 300).await;
    let capture_s = t.elapsed().as_secs_f64();
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    restore_to(&mut c, &ws, &snap.id, out.path()).await;
    let restore_s = t.elapsed().as_secs_f64();
    let want = tree(&ws);
    let got = tree(out.path());
    let diff = tree_diff(&want, &got, 20);
    let st = ws_status(&mut c, &ws).await.unwrap();
    let counters = st.counters.unwrap_or_default();
    println!(
        "figures: event_flood files={n} create={create_s:.1}s snapshot_after={capture_s:.1}s restore={restore_s:.1}s snapshots={} rescans={} events_received={} snapshot_rescan={} entries_compared={} mismatches={}",
        snapshots(&mut c, &ws).await.len(),
        counters.rescans,
        counters.events_received,
        snap.rescan,
        want.len(),
        want.keys().chain(got.keys()).collect::<BTreeSet<_>>().len()
            - want.iter().filter(|(k, v)| got.get(*k) == Some(v)).count(),
    );
    assert!(
        diff.is_empty(),
        "the snapshot differs from the folder:\n{}",
        diff.join("\n")
    );
}
