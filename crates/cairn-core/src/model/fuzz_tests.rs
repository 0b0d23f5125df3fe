//! The loader never panics: arbitrary bytes and thousands of mutations of the shipped
//! pipelines all come back as `Ok` or located diagnostics.

use super::load;

/// xorshift64*: a deterministic generator, so a failure is reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] =
    &["(", ")", "[", "]", "{", "}", ",", ":", "\"", "needs", "Some(", "//", "/*", "\"{x}\"", "\u{1F600}", "-1", "1e99"];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if !v.is_empty() => {
                let end = (at + rng.below(40)).min(v.len());
                v.drain(at.min(end)..end);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                v.splice(at..at, t.iter().copied());
            }
            2 if at < v.len() => v[at] = rng.next() as u8,
            3 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + rng.below(80)).min(v.len());
                let chunk = v[start..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = load("fuzz.ron", &bytes);
    }
}

#[test]
fn mutated_pipelines_never_panic_and_errors_are_located() {
    let seeds = [
        include_bytes!("../../../../pipelines/automata-signal.ron").as_slice(),
        include_bytes!("../../../../pipelines/cairn.ron").as_slice(),
    ];
    let mut rng = Rng(42);
    let mut errors = 0;
    for i in 0..4000 {
        let input = mutate(&mut rng, seeds[i % seeds.len()]);
        if let Err(diags) = load("fuzz.ron", &input) {
            errors += 1;
            for d in diags {
                assert!(d.line >= 1 && d.col >= 1, "unlocated diagnostic: {d}");
                assert!(!d.message.is_empty());
            }
        }
    }
    assert!(errors > 1000, "mutations should mostly break the file, got {errors} errors");
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let mut s = String::from("Pipeline(name: \"x\", steps: {\"a\": (run: \"x\", needs: ");
    s.push_str(&"[".repeat(100_000));
    assert!(load("deep.ron", s.as_bytes()).is_err());
}
