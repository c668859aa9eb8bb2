//! NATS over TLS with client certificates (`AMBA_NATS_TLS_CA`, `AMBA_NATS_TLS_CERT`,
//! `AMBA_NATS_TLS_KEY`): a process that trusts the servers' CA and presents its certificate gets
//! in; one that lacks either does not.

use super::Cluster;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let done = Command::new("openssl").args(args).current_dir(dir).output()?;
        anyhow::ensure!(
            done.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(())
    };
    // Extensions make v3 certificates (webpki refuses v1).
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=amba test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    for (name, extensions) in [("server", "server.ext"), ("client", "client.ext")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        let mut sign = vec!["x509", "-req", "-in", &format!("{name}.csr")]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        sign.extend(
            [
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
            ]
            .map(str::to_owned),
        );
        sign.push(format!("{name}.pem"));
        sign.extend(["-extfile".to_owned(), extensions.to_owned()]);
        run(&sign.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

#[tokio::test]
async fn nats_over_tls_needs_the_ca_and_a_client_certificate() -> anyhow::Result<()> {
    let mut cluster = Cluster::new()?;
    let tls = cluster.dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    make_certificates(&tls)?;
    let port = cluster.spare_port()?;
    let path = |file: &str| tls.join(file).to_string_lossy().into_owned();
    let config = tls.join("server.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n\
             tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n",
            path("js"),
            path("server.pem"),
            path("server.key"),
            path("ca.pem")
        ),
    )?;
    cluster.start_nats_server(&["-c", &config.to_string_lossy()], &tls.join("server.log"))?;
    super::eventually(Duration::from_secs(20), "the TLS NATS server", || async move {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop))
    })
    .await?;
    cluster.env.retain(|(name, _)| name != "AMBA_NATS_URL");
    cluster
        .env
        .push(("AMBA_NATS_URL".to_owned(), format!("tls://127.0.0.1:{port}")));

    // `amba tick` connects, declares the streams and publishes: a whole NATS round trip.
    let tick = |settings: &[(&str, String)]| -> anyhow::Result<std::process::Output> {
        let mut command = cluster.command(&["tick"]);
        command.envs(settings.iter().map(|(k, v)| (*k, v.as_str())));
        Ok(command.output()?)
    };
    let trusted = [
        ("AMBA_NATS_TLS_CA", path("ca.pem")),
        ("AMBA_NATS_TLS_CERT", path("client.pem")),
        ("AMBA_NATS_TLS_KEY", path("client.key")),
    ];
    let ok = tick(&trusted)?;
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("settlement tick"),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let without_client_certificate = tick(&trusted[..1])?;
    assert!(
        !without_client_certificate.status.success(),
        "got in without a client certificate"
    );
    let without_ca = tick(&trusted[1..])?;
    assert!(
        !without_ca.status.success(),
        "trusted a server its CA does not vouch for"
    );
    cluster.stop()
}
