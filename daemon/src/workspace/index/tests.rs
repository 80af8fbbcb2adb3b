//! Tests of the warm index: its tree, totals and journal, and the split of big folders.

use super::*;

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
        let paths = |ix: &Index| {
            let mut out = Vec::new();
            ix.walk(|p, m| out.push((p.to_vec(), *m)));
            out
        };
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
