//! Tests of the warm index: its tree, totals and journal, and the split of big folders.

use super::*;

/// Every path of the index with its entry, in walk order.
fn paths(ix: &Index) -> Vec<(Vec<u8>, FileMeta)> {
    let mut out = Vec::new();
    ix.walk(|p, m| out.push((p.to_vec(), *m)));
    out
}

mod index {
    use super::*;

    fn file(size: u64) -> FileMeta {
        FileMeta {
            kind: Kind::File,
            size,
            ..dir_meta(0o644)
        }
    }

    #[test]
    fn insert_many_is_insert_for_each() {
        let mut one = Index::default();
        one.insert(b"a/d", file(9));
        one.insert(b"x", file(1));
        one.take_journal();
        let mut many = one.clone();
        let entries: Vec<(Vec<u8>, FileMeta)> = vec![
            (b"a/b/c".to_vec(), file(3)),
            (b"a/d".to_vec(), dir_meta(0o700)),
            (b"a/d/e".to_vec(), file(5)),
            (b"z/y".to_vec(), file(2)),
            (b"a/b".to_vec(), dir_meta(0o750)),
            (b"x".to_vec(), file(4)),
            (b"a-b".to_vec(), file(6)),
        ];
        for (p, m) in &entries {
            one.insert(p, *m);
        }
        many.insert_many(entries);
        assert_eq!(paths(&one), paths(&many));
        assert_eq!(one.totals(), many.totals());
        assert_eq!(one.totals(), (5, 20));
        assert_eq!(one.take_journal(), many.take_journal());
    }

    #[test]
    fn a_journal_past_its_limit_asks_for_the_whole_index() {
        let mut ix = Index::load(vec![(b"a".to_vec(), file(1)), (b"b/c".to_vec(), file(2))]);
        assert_eq!(
            (ix.journal_len(), ix.totals()),
            (0, (2, 3)),
            "loading journals nothing"
        );
        ix.limit_journal(3);
        ix.insert(b"x", file(1));
        ix.insert(b"y", file(1));
        assert_eq!(ix.journal_len(), 2);
        ix.insert(b"d/z", file(1));
        ix.insert(b"w", file(1));
        assert_eq!(ix.journal_len(), usize::MAX);
        assert_eq!(ix.totals(), (6, 7));
        ix.clear_journal();
        ix.insert(b"v", file(1));
        assert_eq!(
            ix.take_journal(),
            vec![IndexChange {
                path: b"v".to_vec(),
                meta: Some(file(1))
            }]
        );
    }

    #[test]
    fn an_index_whose_persisted_form_is_unknown_asks_for_the_whole_index() {
        let mut ix = Index::default();
        ix.rewrite_on_persist();
        assert_eq!(ix.journal_len(), usize::MAX, "even with nothing changed");
        ix.insert(b"a", file(1));
        assert_eq!(ix.journal_len(), usize::MAX);
        ix.clear_journal();
        assert_eq!(ix.journal_len(), 0);
    }

    #[test]
    fn insert_remove_totals_and_journal() {
        let mut ix = Index::default();
        ix.insert(b"a/b/c", file(3));
        ix.insert(b"a/d", file(4));
        assert_eq!(ix.totals(), (2, 7));
        assert!(matches!(ix.get(b"a/b"), Some(Node::Dir(_))));
        ix.take_journal();
        ix.remove(b"a/b");
        assert_eq!(ix.totals(), (1, 4));
        let j = ix.take_journal();
        assert!(j.contains(&gone(b"a/b/c")) && j.contains(&gone(b"a/b")));
        // A file replaced by a directory, and back.
        ix.insert(b"a/d", dir_meta(0o755));
        ix.insert(b"a/d/e", file(5));
        assert_eq!(ix.totals(), (1, 5));
        ix.insert(b"a/d", file(1));
        assert_eq!(ix.totals(), (1, 1));
        assert!(ix.take_journal().contains(&gone(b"a/d/e")));
    }

    /// The journal's record of `path` going.
    fn gone(path: &[u8]) -> IndexChange {
        IndexChange {
            path: path.to_vec(),
            meta: None,
        }
    }

    #[test]
    fn only_trees_no_longer_stored_are_forgotten_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut ix = Index::default();
        for p in [&b"a/b/c"[..], b"a/d", b"x/y", b"z"] {
            ix.insert(p, file(1));
        }
        let batch = store.batch();
        let (root, encoded) = ix.root_tree(&batch).unwrap();
        assert_eq!(encoded, 4);
        batch.finish().unwrap();
        // Root, a, a/b, x.
        assert_eq!(ix.cached_trees(), 4);
        assert_eq!(ix.forget_missing_trees(&|_| true), 0);
        assert_eq!(ix.cached_trees(), 4);
        let tree = store.tree(&root).unwrap();
        let a = tree.entries.iter().find(|e| e.name == b"a").unwrap().id;
        let ab = store
            .tree(&a)
            .unwrap()
            .entries
            .iter()
            .find(|e| e.name == b"b")
            .unwrap()
            .id;
        // a/b's tree is gone: it, a and the root go; x keeps its id.
        assert_eq!(ix.forget_missing_trees(&|id| *id != ab), 3);
        assert_eq!(ix.cached_trees(), 1);
        let batch = store.batch();
        assert_eq!(ix.root_tree(&batch).unwrap(), (root, 3), "re-encoded alike");
    }
}

mod split {
    use chkpt_testkit::Rng;

    use super::*;
    use crate::store::Store;
    use crate::store::tree::SPLIT_MIN;

    fn file(size: u64, seed: u64) -> FileMeta {
        FileMeta {
            kind: Kind::File,
            size,
            id: Id::of(&seed.to_le_bytes()),
            ..dir_meta(0o644)
        }
    }

    /// The root tree of `index`, and that of an index loaded afresh from the same entries
    /// (no cached tree or part): equal trees must get equal ids.
    fn both_roots(index: &mut Index, store: &Store) -> (Id, Id, u64) {
        let b = store.batch();
        let (cached, _) = index.root_tree(&b).unwrap();
        let (written, _) = b.written();
        let entries = index
            .entries()
            .into_iter()
            .filter_map(|c| Some((c.path, c.meta?)));
        let (fresh, _) = Index::load(entries).root_tree(&b).unwrap();
        b.finish().unwrap();
        (cached, fresh, written)
    }

    /// Tree format rule 6 through the cache: after every kind of change to a directory of
    /// thousands of entries (a name added or removed anywhere, one a part ends on included, a
    /// file changed, a folder inside changed, the folder shrunk below the split size and grown
    /// again), the cached parts give the id a fresh index computes, and one change writes a
    /// few objects, not the folder.
    #[test]
    fn cached_parts_give_the_ids_a_fresh_index_gives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rng = Rng::new(chkpt_testkit::seed());
        let mut index = Index::default();
        let mut names: Vec<Vec<u8>> = Vec::new();
        for i in 0..SPLIT_MIN as u64 * 3 {
            let name = format!("big/{:08x}.json", rng.next_u64() as u32).into_bytes();
            index.insert(&name, file(i, i));
            names.push(name);
        }
        index.insert(b"big/sub/inner.txt", file(1, 1));
        let (a, b, _) = both_roots(&mut index, &store);
        assert_eq!(a, b);
        for round in 0..60u64 {
            let what = rng.below(6);
            match what {
                0 => {
                    let name = format!("big/{:08x}.json", rng.next_u64() as u32).into_bytes();
                    index.insert(&name, file(round, round + 1_000_000));
                    names.push(name);
                }
                1 if !names.is_empty() => {
                    let at = rng.index(names.len());
                    index.remove(&names.swap_remove(at));
                }
                2 if !names.is_empty() => {
                    let name = names[rng.index(names.len())].clone();
                    index.insert(&name, file(round, round + 2_000_000));
                }
                3 => index.insert(b"big/sub/inner.txt", file(round, round + 3_000_000)),
                4 => {
                    // Several changes between two saves, far apart.
                    for _ in 0..5 {
                        let name = format!("big/{:08x}.json", rng.next_u64() as u32).into_bytes();
                        index.insert(&name, file(round, round + 4_000_000));
                        names.push(name);
                    }
                }
                _ => {}
            }
            let (cached, fresh, written) = both_roots(&mut index, &store);
            assert_eq!(cached, fresh, "round {round}, change {what}");
            assert!(written <= 12, "round {round}: {written} objects written");
        }
        // Shrink below the split size and grow again: stored whole, then split again.
        while names.len() > SPLIT_MIN / 2 {
            index.remove(&names.pop().unwrap());
        }
        let (a, b, _) = both_roots(&mut index, &store);
        assert_eq!(a, b);
        for i in 0..SPLIT_MIN as u64 {
            let name = format!("big/grow{i:06}").into_bytes();
            index.insert(&name, file(i, i + 5_000_000));
        }
        let (a, b, _) = both_roots(&mut index, &store);
        assert_eq!(a, b);
        assert!(
            store
                .tree_node(&store_tree_of(&store, a, b"big"))
                .unwrap()
                .is_split()
        );
    }

    fn store_tree_of(store: &Store, root: Id, name: &[u8]) -> Id {
        store.tree(&root).unwrap().get(name).unwrap().id
    }
}

mod packed {
    use std::collections::BTreeMap;

    use chkpt_testkit::Rng;

    use super::*;

    fn file(size: u64, seed: u64) -> FileMeta {
        FileMeta {
            kind: if seed.is_multiple_of(7) {
                Kind::Symlink
            } else {
                Kind::File
            },
            size,
            mtime_ns: seed as i64 * 3 - 5,
            ctime_ns: -(seed as i64),
            ino: seed ^ 0xdead_beef_0000,
            dev: seed % 3 + (1 << 40),
            id: Id::of(&seed.to_le_bytes()),
            racy: seed.is_multiple_of(2),
            ..dir_meta(0o600 + (seed % 5) as u32)
        }
    }

    /// A name of 1 to 40 bytes of any value but `/` (NUL, 0xff and invalid UTF-8 included).
    fn name(rng: &mut Rng) -> Vec<u8> {
        let len = 1 + rng.below(40) as usize;
        (0..len)
            .map(|_| match rng.below(256) as u8 {
                b'/' => 0,
                b => b,
            })
            .collect()
    }

    fn path(name: &[u8]) -> Vec<u8> {
        let mut p = b"big/".to_vec();
        p.extend_from_slice(name);
        p
    }

    /// What the index holds, against the model: every path in order with its metadata, the
    /// totals, each entry found by `get`, the folder's names sorted.
    fn check(ix: &Index, model: &BTreeMap<Vec<u8>, FileMeta>, at: &str) {
        let mut walked = Vec::new();
        ix.walk(|p, m| walked.push((p.to_vec(), *m)));
        let mut want: Vec<(Vec<u8>, FileMeta)> = vec![(b"big".to_vec(), dir_meta(0o755))];
        want.extend(model.iter().map(|(p, m)| (p.clone(), *m)));
        // The model is in path order, the walk in tree order: the same set, and the walk
        // lists a directory's entries by name.
        let mut sorted = walked.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(sorted, want, "{at}");
        let files = model.values().filter(|m| m.kind != Kind::Dir).count() as u64;
        let bytes = model.values().map(|m| m.size).sum::<u64>();
        assert_eq!(ix.totals(), (files, bytes), "{at}");
        for (p, m) in model {
            assert_eq!(ix.get(p).map(|n| n.meta()), Some(*m), "{at}");
        }
        let Some(Node::Dir(big)) = ix.get(b"big") else {
            panic!("{at}: no folder")
        };
        assert!(big.children.sorted(), "{at}: names out of order");
        let names: Vec<&[u8]> = big.names().collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{at}");
    }

    /// Thousands of names of any bytes, added one by one and in bulk in no order, replaced,
    /// removed, a file turned into a folder and back: the folder stays sorted, and the index
    /// holds what a map of paths holds.
    #[test]
    fn a_big_folder_stays_sorted_through_every_change() {
        let mut rng = Rng::new(chkpt_testkit::seed());
        let mut ix = Index::default();
        ix.insert(b"big", dir_meta(0o755));
        let mut model: BTreeMap<Vec<u8>, FileMeta> = BTreeMap::new();
        // In bulk, no order, some names twice.
        let mut bulk = Vec::new();
        for i in 0..6000u64 {
            let n = name(&mut rng);
            bulk.push((path(&n), file(i, i)));
            if i % 100 == 0 {
                bulk.push((path(&n), file(i + 1, i + 1)));
            }
        }
        for (p, m) in &bulk {
            model.insert(p.clone(), *m);
        }
        ix.insert_many(bulk);
        check(&ix, &model, "after the bulk insert");
        let mut seed = 10_000u64;
        for round in 0..400 {
            seed += 1;
            let names: Vec<Vec<u8>> = model.keys().cloned().collect();
            match rng.below(5) {
                0 => {
                    let p = path(&name(&mut rng));
                    ix.insert(&p, file(seed, seed));
                    model.insert(p, file(seed, seed));
                }
                1 if !names.is_empty() => {
                    let p = &names[rng.index(names.len())];
                    ix.remove(p);
                    let below: Vec<Vec<u8>> = model
                        .keys()
                        .filter(|k| k.starts_with(p) && k.get(p.len()) == Some(&b'/'))
                        .cloned()
                        .collect();
                    for k in below {
                        model.remove(&k);
                    }
                    model.remove(p);
                }
                2 if !names.is_empty() => {
                    // A file becomes a folder with a file in it, then a file again.
                    let p = names[rng.index(names.len())].clone();
                    if p.iter().filter(|&&b| b == b'/').count() > 1 || model[&p].kind == Kind::Dir {
                        continue;
                    }
                    let mut inner = p.clone();
                    inner.extend_from_slice(b"/\xffinner");
                    ix.insert(&p, dir_meta(0o700));
                    ix.insert(&inner, file(seed, seed));
                    model.insert(p.clone(), dir_meta(0o700));
                    model.insert(inner.clone(), file(seed, seed));
                    check(
                        &ix,
                        &model,
                        &format!("round {round}: a file became a folder"),
                    );
                    if rng.below(2) == 0 {
                        ix.insert(&p, file(seed + 1, seed + 1));
                        model.remove(&inner);
                        model.insert(p, file(seed + 1, seed + 1));
                    }
                }
                3 => {
                    // A bulk of new and known names, in no order.
                    let mut bulk = Vec::new();
                    for _ in 0..MERGE_RUN * 3 {
                        seed += 1;
                        let p = if rng.below(2) == 0 && !names.is_empty() {
                            names[rng.index(names.len())].clone()
                        } else {
                            path(&name(&mut rng))
                        };
                        if model.get(&p).is_some_and(|m| m.kind == Kind::Dir) {
                            continue;
                        }
                        bulk.push((p, file(seed, seed)));
                    }
                    for (p, m) in &bulk {
                        model.insert(p.clone(), *m);
                    }
                    ix.insert_many(bulk);
                }
                _ => {
                    // Many removed: the names' arena is rewritten.
                    for p in names.iter().take(300) {
                        if model.get(p).is_some_and(|m| m.kind != Kind::Dir) {
                            ix.remove(p);
                            model.remove(p);
                        }
                    }
                }
            }
            if round % 40 == 0 {
                check(&ix, &model, &format!("round {round}"));
            }
        }
        check(&ix, &model, "at the end");
        let loaded = Index::load(
            ix.entries()
                .into_iter()
                .filter_map(|c| Some((c.path, c.meta?))),
        );
        check(&loaded, &model, "loaded again");
    }

    /// A run of one folder's entries in no order, names given twice and a file turned into a
    /// folder among them, merged in one pass: what inserting each gives.
    #[test]
    fn a_merged_run_is_insert_for_each() {
        let mut rng = Rng::new(chkpt_testkit::seed());
        let mut base = Index::default();
        for i in 0..500u64 {
            base.insert(&path(&name(&mut rng)), file(i, i));
        }
        base.insert(b"big/known", file(1, 1));
        base.insert(b"big/dir/x", file(1, 1));
        base.take_journal();
        let mut run = Vec::new();
        for i in 0..200u64 {
            run.push((path(&name(&mut rng)), file(i, i + 1000)));
        }
        run.push((b"big/known".to_vec(), dir_meta(0o700)));
        run.push((b"big/dir".to_vec(), file(3, 3)));
        run.push((b"big/twice".to_vec(), file(4, 4)));
        run.push((b"big/twice".to_vec(), dir_meta(0o711)));
        run.push((b"big/twice".to_vec(), file(5, 5)));
        for i in (1..run.len()).rev() {
            run.swap(i, rng.index(i + 1));
        }
        let mut one = base.clone();
        for (p, m) in &run {
            one.insert(p, *m);
        }
        let mut many = base;
        many.insert_many(run);
        assert_eq!(paths(&one), paths(&many));
        assert_eq!(one.totals(), many.totals());
        assert_eq!(one.journal_len(), many.journal_len());
        assert_eq!(one.take_journal(), many.take_journal());
    }
}
