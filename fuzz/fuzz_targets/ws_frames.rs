//! WebSocket streams in either direction: one verdict however they are split.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_gateway::fuzzing::ws_frames(data);
});
