//! `Cookie` headers as clients send them: the gateway's readings agree, its own
//! cookies never reach the upstream, and a credential value parses or is refused.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_gateway::fuzzing::cookie_headers(data);
    if let Ok(value) = std::str::from_utf8(data) {
        for prefix in [
            portcullis_core::cookie::SESSION_PREFIX,
            portcullis_core::cookie::PRE_LOGIN_PREFIX,
        ] {
            if let Ok(cookie) = portcullis_core::cookie::parse(value, prefix) {
                assert!(cookie.id.starts_with(prefix));
                assert!(portcullis_core::cookie::is_well_formed_id(
                    cookie.id, prefix
                ));
            }
        }
    }
});
