//! skopeo as the oracle of `inspect --format` (its Go template over the summary
//! document, written through a tabwriter skopeo never flushes) and of the one
//! image-config encoder (`inspect --config` and `copy --format oci`) on a config
//! that Go decodes leniently (a field name in another case, `ArgsEscaped`, an
//! empty history, HTML characters, a time with an offset).

use std::path::Path;
use std::process::Output;

use ferry::media_type as mt;

use crate::harness::*;

fn ferry_out(args: &[&str]) -> Output {
    run(ferry().env("FERRY_TEST_NO_RETRY_DELAY", "1").args(args))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A Docker schema 2 image as a skopeo `dir:` directory, with a config Go reads leniently.
fn odd_dir_image(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let put = |b: &[u8]| {
        let d = sha256(b);
        std::fs::write(dir.join(&d[7..]), b).unwrap();
        (d, b.len())
    };
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    t.append_data(&mut h, "f", &b"hi"[..]).unwrap();
    let layer = t.into_inner().unwrap();
    let diff = sha256(&layer);
    let (ld, ls) = put(&layer);
    let config = format!(
        r#"{{"Architecture":"amd64","os":"linux","created":"2024-01-02T03:04:05.120+02:00","docker_version":"24.0","config":{{"Env":["A=<1>&"],"ArgsEscaped":true,"Cmd":["sh"],"Labels":{{"k":"v","a b":"<c>"}},"ExposedPorts":{{"80/tcp":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":["{diff}"]}},"history":[],"unknown":1}}"#
    );
    let (cd, cs) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","size":{cs},"digest":"{cd}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":{ls},"digest":"{ld}"}}]}}"#,
        mt::DOCKER_MANIFEST,
        mt::DOCKER_CONFIG
    );
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
}

/// The templates users write, and a few of Go's corners (tabs, `table`, `\n`, whole document).
const TEMPLATES: &[&str] = &[
    "{{.Digest}}",
    "Name: {{.Name}} Digest: {{.Digest}}",
    "{{index .Labels \"k\"}}",
    "{{range .RepoTags}}{{.}} {{end}}",
    "{{.Architecture}}/{{.Os}}",
    "{{len .Layers}}",
    "{{if .Labels}}yes{{else}}no{{end}}",
    "{{.Created}}",
    "{{.Env}} {{.Labels}} {{.Layers}}",
    "{{.DockerVersion}}|{{.RepoTags}}|{{.Tag}}",
    "{{json .}}",
    "json",
    "{{printf \"%s-%d|%5s|%q\" .Os 3 .Architecture .Name}}",
    "{{.}}",
    "{{range $i, $e := .Layers}}{{$i}}={{$e}},{{end}}",
    "{{range $k, $v := .Labels}}{{$k}}:{{$v}};{{end}}",
    "{{.Os}}\\t{{.Architecture}}\\nend",
    "{{.Os}}\\t{{.Architecture}}",
    "table {{.Os}}",
    "{{with .Env}}{{index . 0}}{{else}}no env{{end}}",
    "{{.Labels.nokey}}|{{index .Labels \"nokey\"}}",
    "{{if eq .Os \"linux\"}}L{{else if .Os}}O{{end}} {{not .RepoTags}}",
    "{{- .Os -}} x {{/* comment */}}",
    // Refused by both: an unknown field, a template that does not parse, an index out of range.
    "{{.Nope}}",
    "{{.Digest",
    "{{end}}",
    "{{if .Os}}",
    "{{index .Layers 99}}",
];

#[test]
fn inspect_format_matches_skopeo() {
    let (_, corpus) = small();
    let (_dir, reg) = small_registry();
    let work = tempfile::tempdir().unwrap();
    let mut refs: Vec<String> = [
        mt::DOCKER_MANIFEST,
        mt::OCI_MANIFEST,
        mt::DOCKER_MANIFEST_LIST,
        mt::OCI_INDEX,
    ]
    .iter()
    .map(|t| {
        let img = corpus.images.iter().find(|i| i.media_type == *t).unwrap();
        format!("docker://{}/{}:{}", reg.addr, img.repository, img.tag)
    })
    .collect();
    let odd = work.path().join("odd");
    odd_dir_image(&odd);
    refs.push(format!("dir:{}", odd.display()));
    for r in &refs {
        for t in TEMPLATES {
            let args = ["inspect", "--tls-verify=false", "--format", t, r.as_str()];
            let (s, f) = (skopeo(&args), ferry_out(&args));
            assert_eq!(
                f.status.success(),
                s.status.success(),
                "{t} on {r}: skopeo said {} / ferry said {}",
                text(&s.stderr),
                text(&f.stderr)
            );
            if s.status.success() {
                assert_eq!(text(&f.stdout), text(&s.stdout), "{t} on {r}");
            } else {
                assert_eq!(f.status.code(), Some(1), "{t}: {}", text(&f.stderr));
                let err = text(&f.stderr);
                assert_eq!(err.trim().lines().count(), 1, "{t}: {err}");
                assert!(f.stdout.is_empty(), "{t}: nothing on stdout");
            }
        }
    }
    // `-f` is the short flag; `json` on a field is ferry's (podman's) extension: compact JSON.
    let out = ferry_out(&["inspect", "-f", "{{json .Labels}}", &refs[4]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"a b\":\"<c>\",\"k\":\"v\"}\n");
}

#[test]
fn the_one_config_encoder_matches_skopeo_for_inspect_and_conversion() {
    let work = tempfile::tempdir().unwrap();
    let odd = work.path().join("odd");
    odd_dir_image(&odd);
    let r = format!("dir:{}", odd.display());
    for args in [
        vec!["inspect", r.as_str()],
        vec!["inspect", "--config", r.as_str()],
    ] {
        let (s, f) = (skopeo_ok(&args), ferry_out(&args));
        assert!(f.status.success(), "{args:?}: {}", text(&f.stderr));
        assert_eq!(text(&f.stdout), text(&s.stdout), "{args:?}");
    }
    // Converted to OCI by both: the same manifest and config bytes.
    let (sd, fd) = (work.path().join("s"), work.path().join("f"));
    skopeo_ok(&[
        "copy",
        "-q",
        "--format",
        "oci",
        &r,
        &format!("dir:{}", sd.display()),
    ]);
    let out = ferry_out(&[
        "copy",
        "-q",
        "--format",
        "oci",
        &r,
        &format!("dir:{}", fd.display()),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sm = std::fs::read(sd.join("manifest.json")).unwrap();
    assert_eq!(std::fs::read(fd.join("manifest.json")).unwrap(), sm);
    let m: serde_json::Value = serde_json::from_slice(&sm).unwrap();
    let cfg = &m["config"]["digest"].as_str().unwrap()[7..];
    assert_eq!(
        std::fs::read(fd.join(cfg)).unwrap(),
        std::fs::read(sd.join(cfg)).unwrap()
    );
}
