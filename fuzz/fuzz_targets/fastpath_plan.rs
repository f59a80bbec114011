//! Request heads as a client sends them to the fast path: what it takes is well
//! framed and reaches the upstream without any gateway header or credential.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_gateway::fuzzing::fastpath_plan(data);
});
