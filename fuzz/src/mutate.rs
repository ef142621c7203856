//! Mutations: pure functions of a seeded generator and the inputs.

/// xorshift64*: small, fast, seeded.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `parent`: flip, insert, delete, duplicate a span, splice with `other`, insert a
/// dictionary token, repeat a span many times (deep nesting, long chains). At most `max_len` bytes.
pub fn mutate(rng: &mut Rng, parent: &[u8], other: &[u8], dictionary: &[&[u8]], max_len: usize) -> Vec<u8> {
    let mut child = parent.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(child.len() + 1);
        match rng.below(8) {
            0 if !child.is_empty() => {
                let i = rng.below(child.len());
                child[i] ^= 1 << rng.below(8);
            }
            1 => child.insert(at, rng.next_u64() as u8),
            2 if !child.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(child.len());
                child.drain(at.min(end)..end);
            }
            3 if !child.is_empty() => {
                let start = rng.below(child.len());
                let end = (start + 1 + rng.below(16)).min(child.len());
                let span = child[start..end].to_vec();
                child.splice(at..at, span);
            }
            4 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(32)).min(other.len());
                child.splice(at..at, other[start..end].iter().copied());
            }
            5 | 6 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())];
                child.splice(at..at, token.iter().copied());
            }
            7 if !child.is_empty() => {
                let start = rng.below(child.len());
                let end = (start + 1 + rng.below(4)).min(child.len());
                let span = child[start..end].to_vec();
                let times = 1 + rng.below(200);
                let repeated: Vec<u8> = span.iter().copied().cycle().take(span.len() * times).collect();
                child.splice(at..at, repeated);
            }
            _ => child.push(rng.next_u64() as u8),
        }
    }
    child.truncate(max_len);
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_children() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..100).map(|_| mutate(&mut rng, b"type = 'a'", b"EXISTS x", &[b" AND "], 64)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(9).iter().all(|child| child.len() <= 64));
    }
}
