//! Mosquitto's own configuration format (`mosquitto.conf`): `key value` lines, `#` comments, `listener PORT
//! [ADDRESS]` with the TLS options that follow it, and `include_dir`. A file named `*.conf` given to `--config` is
//! read this way, so a Mosquitto configuration moves over unchanged where Skein has the settings; an option Skein
//! does not have stops start-up with its line, except a few that only concern Mosquitto's own process (logging,
//! pid file, user), which are reported and skipped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// Options that shape Mosquitto's process rather than the broker: skipped, with a note.
const IGNORED: &[&str] = &[
    "pid_file",
    "user",
    "log_dest",
    "log_type",
    "log_timestamp",
    "log_timestamp_format",
    "connection_messages",
    "autosave_interval",
    "autosave_on_changes",
    "persistence_file",
    "per_listener_settings",
    "log_facility",
    "websockets_log_level",
    // Gone from Mosquitto 2: resends happen on reconnect, as MQTT 3.1.1 and 5.0 have it.
    "retry_interval",
    "store_clean_interval",
];

/// Reads a Mosquitto configuration file (and the files its `include_dir` lines name).
pub fn load(path: &Path) -> Result<Config, String> {
    let mut parser = Parser { config: Config::default(), listener: None, require_certificate: false, cafile: None };
    parser.file(path)?;
    parser.finish()
}

struct Parser {
    config: Config,
    /// The last `listener` line: its address, whether TLS options followed it, and whether it is `protocol
    /// websockets`.
    listener: Option<(SocketAddr, bool, bool)>,
    require_certificate: bool,
    cafile: Option<PathBuf>,
}

impl Parser {
    fn file(&mut self, path: &Path) -> Result<(), String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).map_or((line, ""), |(k, v)| (k, v.trim()));
            self.option(key, value).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        }
        Ok(())
    }

    fn option(&mut self, key: &str, value: &str) -> Result<(), String> {
        let c = &mut self.config;
        match key {
            "listener" => {
                self.flush_listener();
                let mut words = value.split_whitespace();
                let port: u16 = parse(key, words.next().unwrap_or(""))?;
                let ip: IpAddr = match words.next() {
                    Some(a) => a.parse().map_err(|_| format!("listener address {a:?}: give an IP address"))?,
                    None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                };
                self.listener = Some((SocketAddr::new(ip, port), false, false));
            }
            "protocol" => match (&mut self.listener, value) {
                (None, _) => return Err("`protocol` needs a `listener` line above it".into()),
                (Some((_, _, ws)), "mqtt") => *ws = false,
                (Some((_, _, ws)), "websockets") => *ws = true,
                _ => return Err(format!("protocol {value}: use mqtt or websockets")),
            },
            "certfile" => self.tls(|c| c.tls_cert = Some(PathBuf::from(value)))?,
            "keyfile" => self.tls(|c| c.tls_key = Some(PathBuf::from(value)))?,
            "cafile" => self.cafile = Some(PathBuf::from(value)),
            "require_certificate" => self.require_certificate = flag(key, value)?,
            // Of every TLS listener here: the TLS settings are one set for all of them.
            "tls_version" => {
                c.tls_version = match value {
                    "tlsv1.3" => crate::config::TlsVersion::Tls13,
                    "tlsv1.2" => crate::config::TlsVersion::Tls12,
                    "tlsv1.1" => crate::config::TlsVersion::Tls11,
                    _ => return Err(format!("tls_version {value:?}: use tlsv1.3, tlsv1.2 or tlsv1.1")),
                };
            }
            "use_identity_as_username" => c.use_identity_as_username = flag(key, value)?,
            "allow_anonymous" => c.allow_anonymous = Some(flag(key, value)?),
            "password_file" => c.password_file = Some(PathBuf::from(value)),
            "acl_file" => c.acl_file = Some(PathBuf::from(value)),
            "persistence" => c.persistence = flag(key, value)?,
            "persistence_location" => c.data_dir = PathBuf::from(value),
            "max_inflight_messages" => c.max_inflight_messages = parse(key, value)?,
            "max_queued_messages" => c.max_queued_messages = parse(key, value)?,
            "max_queued_bytes" => c.max_queued_bytes = parse(key, value)?,
            "queue_qos0_messages" => c.queue_qos0_messages = flag(key, value)?,
            "allow_zero_length_clientid" => c.allow_zero_length_clientid = flag(key, value)?,
            "auto_id_prefix" => c.auto_id_prefix = value.to_string(),
            "clientid_prefixes" => c.clientid_prefixes = value.to_string(),
            "use_username_as_clientid" => c.use_username_as_clientid = flag(key, value)?,
            "persistent_client_expiration" => {
                c.persistent_client_expiration = value.parse().map_err(|e: String| format!("{key}: {e}"))?;
            }
            "message_size_limit" => c.message_size_limit = parse(key, value)?,
            "max_packet_size" => c.max_packet_size = parse(key, value)?,
            // Inside a listener block: that listener's own limit; before any, all of them together.
            "max_connections" => match self.listener {
                Some((addr, _, _)) => {
                    let n: i64 = parse(key, value)?;
                    c.listener_max_connections.push(format!("{addr}={}", n.max(0)));
                }
                None => c.max_connections = parse(key, value)?,
            },
            "max_keepalive" => c.max_keepalive = parse(key, value)?,
            "sys_interval" => c.sys_interval = parse(key, value)?,
            "retain_available" => c.retain_available = flag(key, value)?,
            // Client sockets always have TCP_NODELAY here (Mosquitto's default is off).
            "set_tcp_nodelay" => {
                if !flag(key, value)? {
                    eprintln!(
                        "skein: `set_tcp_nodelay false`: skein always sets TCP_NODELAY on client sockets; skipped"
                    );
                }
            }
            "max_topic_alias" => c.max_topic_alias = parse(key, value)?,
            "max_qos" => c.max_qos = parse(key, value)?,
            "connect_timeout" => c.connect_timeout = parse(key, value)?,
            "idle_park_after" => c.idle_park_after = parse(key, value)?,
            "max_topic_levels" => c.max_topic_levels = parse(key, value)?,
            "max_topic_length" => c.max_topic_length = parse(key, value)?,
            "max_subscriptions" => c.max_subscriptions = parse(key, value)?,
            "max_connection_rate" => c.max_connection_rate = parse(key, value)?,
            "max_publish_rate" => c.max_publish_rate = parse(key, value)?,
            "include_dir" => {
                // Mosquitto reads the directory's *.conf files in alphabetical order.
                let mut files: Vec<PathBuf> = std::fs::read_dir(value)
                    .map_err(|e| format!("include_dir {value}: {e}"))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                    .collect();
                files.sort();
                for f in files {
                    self.file(&f)?;
                }
            }
            k if IGNORED.contains(&k) => eprintln!("skein: Mosquitto option `{k}` does not apply to skein; skipped"),
            k => {
                return Err(format!(
                    "Mosquitto option `{k}` is not supported by skein; remove it, or see `skein serve --help` for \
                     what is"
                ));
            }
        }
        Ok(())
    }

    /// A TLS option belongs to the listener above it.
    fn tls(&mut self, set: impl FnOnce(&mut Config)) -> Result<(), String> {
        match &mut self.listener {
            Some((_, tls, _)) => *tls = true,
            None => return Err("a TLS option needs a `listener` line above it".into()),
        }
        set(&mut self.config);
        Ok(())
    }

    fn flush_listener(&mut self) {
        match self.listener.take() {
            Some((addr, false, false)) => self.config.mqtt.push(addr),
            Some((addr, true, false)) => self.config.mqtts.push(addr),
            Some((addr, false, true)) => self.config.ws.push(addr),
            Some((addr, true, true)) => self.config.wss.push(addr),
            None => {}
        }
    }

    fn finish(mut self) -> Result<Config, String> {
        self.flush_listener();
        // A server-side cafile verifies client certificates, which Mosquitto asks for only with require_certificate.
        if self.require_certificate {
            let ca =
                self.cafile.ok_or("require_certificate true needs a cafile (the CA of the client certificates)")?;
            self.config.tls_client_ca = Some(ca);
        }
        Ok(self.config)
    }
}

/// A yes/no option: `true`/`false`, or `1`/`0`, as Mosquitto reads them.
fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{key} {value:?}: use true or false")),
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{key} {value:?}: not a valid value for it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` read as a Mosquitto configuration file.
    fn load_text(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.conf");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn a_mosquitto_configuration_with_an_include_dir() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        std::fs::write(conf_d.join("default.conf"), "allow_anonymous false\npassword_file /etc/mosquitto/passwd\n")
            .unwrap();
        let main = dir.path().join("mosquitto.conf");
        std::fs::write(
            &main,
            format!(
                "# Debian's file\npid_file /run/mosquitto/mosquitto.pid\npersistence true\npersistence_location \
                 /var/lib/mosquitto/\nlog_dest file /var/log/mosquitto/mosquitto.log\ninclude_dir {}\n\nlistener \
                 1883\nmax_connections 500\nlistener 8080\nprotocol websockets\nmax_connections -1\nlistener 8883 127.0.0.1\ncertfile /etc/s.pem\nkeyfile /etc/s.key\ncafile /etc/ca.pem\n\
                 require_certificate true\nuse_identity_as_username true\n",
                conf_d.display()
            ),
        )
        .unwrap();
        let c = load(&main).unwrap();
        assert_eq!(c.mqtt, vec!["0.0.0.0:1883".parse().unwrap()]);
        assert_eq!(c.mqtts, vec!["127.0.0.1:8883".parse().unwrap()]);
        assert_eq!(c.ws, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(c.allow_anonymous, Some(false));
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/mosquitto/passwd")));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/mosquitto/"));
        assert_eq!(c.tls_client_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(c.use_identity_as_username);
        assert_eq!(c.listener_max_connections, vec!["0.0.0.0:1883=500", "0.0.0.0:8080=0"], "per listener");
        assert_eq!(c.max_connections, -1, "no limit over all listeners");
    }

    #[test]
    fn an_unsupported_option_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.conf");
        std::fs::write(&path, "listener 1883\nbridge_protocol_version mqttv311\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains("m.conf:2:") && err.contains("bridge_protocol_version"), "{err}");
        std::fs::write(&path, "certfile /x.pem\n").unwrap();
        assert!(load(&path).unwrap_err().contains("listener"));
        std::fs::write(&path, "max_queued_messages lots\n").unwrap();
        assert!(load(&path).unwrap_err().contains(":1: max_queued_messages"));
        std::fs::write(&path, "allow_anonymous yes\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains(":1: allow_anonymous \"yes\": use true or false"), "{err}");
    }

    #[test]
    fn client_id_and_expiry_options_read_as_mosquitto_reads_them() {
        let text = "allow_zero_length_clientid false\nauto_id_prefix auto-\npersistent_client_expiration 14d\n\
                    clientid_prefixes plant-\nuse_username_as_clientid true\n";
        let b = load_text(text).unwrap().broker();
        assert!(!b.allow_zero_length_clientid);
        assert_eq!(b.auto_id_prefix, "auto-");
        assert_eq!(b.clientid_prefixes, "plant-");
        assert!(b.use_username_as_clientid);
        assert_eq!(b.persistent_client_expiration, Some(std::time::Duration::from_secs(14 * 86_400)));
        let err = load_text("listener 1883\npersistent_client_expiration 2 weeks\n").unwrap_err();
        assert!(err.contains(":2: persistent_client_expiration") && err.contains("no duration"), "{err}");
    }

    #[test]
    fn tls_version_reads_as_mosquitto_names_it() {
        let tls = "listener 8883\ncertfile /c.pem\nkeyfile /k.pem\ntls_version";
        assert!(load_text(&format!("{tls} tlsv1.3\n")).unwrap().tls_files().unwrap().tls13_only);
        let old = load_text(&format!("{tls} tlsv1.1\n")).unwrap();
        assert!(!old.tls_files().unwrap().tls13_only, "1.1 is below what is offered anyway");
        assert!(load_text("listener 8883\ntls_version ssl3\n").unwrap_err().contains(":2: tls_version"));
    }

    #[test]
    fn queue_limits_read_in_messages_and_bytes() {
        let c = load_text("max_queued_messages 50\nmax_queued_bytes 1048576\n").unwrap();
        assert_eq!((c.max_queued_messages, c.max_queued_bytes), (50, 1_048_576));
        assert_eq!(c.broker().max_queued_bytes, 1_048_576);
        assert!(load_text("max_queued_bytes -1\n").unwrap_err().contains(":1: max_queued_bytes"));
    }

    #[test]
    fn yes_no_options_read_as_mosquitto_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.conf");
        std::fs::write(
            &path,
            "allow_anonymous 1
persistence 0
retain_available 0
set_tcp_nodelay true
",
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert_eq!((c.allow_anonymous, c.persistence, c.retain_available), (Some(true), false, false));
        std::fs::write(
            &path,
            "allow_anonymous 0
queue_qos0_messages 1
set_tcp_nodelay false
",
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert_eq!((c.allow_anonymous, c.queue_qos0_messages), (Some(false), true));
    }
}
