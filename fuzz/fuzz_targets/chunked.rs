//! Chunked bodies as an upstream sends them: one verdict however they are split.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_gateway::fuzzing::chunked_body(data);
});
