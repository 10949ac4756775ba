//! Loading a policy set from files (as an agent does with a received bundle) never panics:
//! the input is a JSON object of file name → contents.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(files) = serde_json::from_slice::<BTreeMap<String, String>>(data) {
        let _ = vouch_policy::bundle::load_files(files);
    }
});
