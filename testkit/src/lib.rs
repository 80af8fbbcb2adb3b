//! Test support shared by the black-box tests, the engine tests, the benchmark and the power-loss
//! file system: one seeded generator, so a failing run replays from its printed seed, and a
//! file system of a test's own to fill ([`disk`]).

pub mod disk;

/// A small seeded PRNG (splitmix64): the same seed gives the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into something `len` long (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        (self.next_u64() % len.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.index(v.len())])
    }

    /// `len` incompressible bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The run's seed: `CHKPT_SEED` when set (to replay a run), else one from the clock. A test prints
/// it, so any run can be replayed.
pub fn seed() -> u64 {
    std::env::var("CHKPT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        })
}

/// `len` incompressible bytes, the same for the same seed: content no compressor shrinks and no
/// two seeds share, for tests that count stored bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// `len` bytes of something like source code, the same for the same seed: words of a small
/// vocabulary and numbers in a seeded order, which LZ4's fast mode compresses and LZ4 HC
/// compresses better (for tests of the idle recompression).
pub fn source_text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "fn ", "let ", "struct ", "impl ", "self", ".iter()", "match ", "=> ", "Some(", "None",
        "return ", ";\n    ",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        if let Some(w) = rng.pick(&WORDS) {
            out.extend_from_slice(w.as_bytes());
        }
        out.extend_from_slice(rng.below(97).to_string().as_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_others_differ() {
        assert_eq!(noise(1000, 7), noise(1000, 7));
        assert_ne!(noise(1000, 7), noise(1000, 8));
        assert_eq!(noise(13, 1).len(), 13);
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(r.index(0), 0);
        assert!(r.pick::<u8>(&[]).is_none());
    }

    #[test]
    fn noise_does_not_compress() {
        // A poor generator repeats: count distinct 8-byte words.
        let b = noise(1 << 16, 42);
        let words: std::collections::HashSet<_> = b.chunks(8).collect();
        assert_eq!(words.len(), (1 << 16) / 8);
    }
}
