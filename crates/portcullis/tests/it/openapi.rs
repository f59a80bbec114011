//! The OpenAPI document against the running gateway: every documented operation
//! is routed, every other method on a documented path is 405, every operation not
//! marked exempt (`security: []`) refuses an anonymous call, and an independent
//! validator (PyPI openapi-spec-validator) accepts the document.

use std::process::Command;

use crate::harness::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn validator() -> std::path::PathBuf {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openapi-validator/.venv/bin/openapi-spec-validator"
    ))
    .to_owned();
    assert!(
        path.exists(),
        "the OpenAPI validator is not installed: run scripts/ensure-openapi-validator (scripts/test does)"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_router() {
    let db = TestDb::new(Backend::Sqlite).await;
    let gw = TestGateway::start(&db).await;
    let r = gw.client.get("/.auth/api/openapi.json", &[]).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    let mut exempt = Vec::new();
    let mut optional = Vec::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "x")
            .replace("{slug}", "x")
            .replace("{token}", "x");
        let item = item.as_object().unwrap();
        for method in METHODS {
            let documented = item.get(&method.to_ascii_lowercase());
            let r = gw.client.request(method, &concrete, &[], "").await;
            match documented {
                None => assert_eq!(r.status, 405, "{method} {path} is not documented"),
                Some(op) => {
                    assert_ne!(
                        r.status, 405,
                        "{method} {path} is documented but not routed"
                    );
                    assert_ne!(
                        r.status, 404,
                        "{method} {path} is documented but not routed"
                    );
                    let security = op["security"].as_array().unwrap();
                    if security.is_empty() {
                        exempt.push(format!("{method} {path}"));
                    } else if security.iter().any(|s| s.as_object().unwrap().is_empty()) {
                        optional.push(format!("{method} {path}"));
                    } else {
                        assert_eq!(
                            r.status,
                            401,
                            "{method} {path} is not marked exempt but answers anonymously: {}",
                            r.text()
                        );
                        for scheme in security {
                            let names: Vec<_> =
                                scheme.as_object().unwrap().keys().cloned().collect();
                            for name in names {
                                assert!(
                                    doc["components"]["securitySchemes"].get(&name).is_some(),
                                    "{name}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    // Exactly these answer without a session; adding one needs listing it here.
    exempt.sort();
    assert_eq!(
        exempt,
        [
            "GET /.auth/access-required",
            "GET /.auth/api/openapi.json",
            "GET /.auth/capabilities",
            "GET /.auth/healthz",
            "GET /.auth/login",
            "GET /.auth/logout",
            "GET /.auth/magic/{token}",
            "GET /.auth/oidc/callback",
            "GET /.auth/oidc/login",
            "GET /.auth/readyz",
            "POST /.auth/login",
            "POST /.auth/magic/{token}",
            "POST /.auth/oidc/back-channel-logout",
        ]
    );
    assert_eq!(optional, ["POST /.auth/logout"]);
    // Cookie mutations declare the CSRF header with the cookie.
    let revoke = &paths["/.auth/api/v1/sessions/{id}"]["delete"]["security"];
    assert_eq!(
        revoke,
        &serde_json::json!([{"sessionCookie": [], "csrfHeader": []}, {"bearer": []}])
    );

    // The independent validator accepts it, and rejects a broken copy (so its
    // verdict means something).
    let dir = std::env::temp_dir().join(format!("pc-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("openapi.json");
    std::fs::write(&good, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(validator()).arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut broken = doc.clone();
    broken["paths"]["/.auth/me"]["get"]["responses"] = serde_json::json!("none");
    let bad = dir.join("broken.json");
    std::fs::write(&bad, serde_json::to_vec(&broken).unwrap()).unwrap();
    let out = Command::new(validator()).arg(&bad).output().unwrap();
    assert!(
        !out.status.success(),
        "the validator accepted a broken document"
    );
}
