//! The config loader over arbitrary UTF-8 text.
//!
//! `ssegate::config::parse(text, "fuzz.toml", base)` with `base` a folder
//! that does not exist, so certificate and key paths fail to resolve (inputs
//! with an absolute one are skipped; see `config_check::reads_outside_base`).
//! Checks (`ssegate_fuzz::config_check`): no panic; a valid config has what
//! validation promises and a summary; every error displays as
//! `fuzz.toml:LINE:COL: ...` with LINE and COL inside the text, or as
//! `fuzz.toml: `listener`: ...` (and `upstream`, `route`) for an absent
//! required section; errors come in file order, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    ssegate_fuzz::config_check::parse_and_check(text);
});
