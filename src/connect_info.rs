//! `rds-auth-proxy connect-info`: ready-made client settings for the local listener — a psql
//! line, a libpq URI, a JDBC URL, DBeaver's fields, a pg_service.conf entry, PG* variables —
//! computed from the same flags the proxy takes, so they always point where the proxy listens.
//! No password anywhere: the proxy answers the password request itself.

use std::net::IpAddr;
use std::path::PathBuf;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::cli::ConnectInfoFormat;
use crate::config::Config;
use crate::local_tls::LocalTlsConfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectInfoError {
    #[error("connect-info needs the fixed port the proxy listens on: --port 0 picks a random one at start")]
    RandomPort,
    #[error("--dbname must not be empty")]
    EmptyDbname,
}

/// What clients are told about TLS towards the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTls {
    /// No `--local-tls`: the listener answers SSLRequest with `N`. `disable` is said explicitly
    /// so that a `PGSSLMODE=require` left in the environment does not break the settings.
    Disable,
    /// `--local-tls-cert`: a certificate whose names and CA we do not know.
    Require,
    /// `--local-tls` with the generated CA: verify the listener against it.
    VerifyFull { ca: PathBuf },
}

impl ClientTls {
    fn sslmode(&self) -> &'static str {
        match self {
            ClientTls::Disable => "disable",
            ClientTls::Require => "require",
            ClientTls::VerifyFull { .. } => "verify-full",
        }
    }

    fn root_cert(&self) -> Option<String> {
        match self {
            ClientTls::VerifyFull { ca } => Some(ca.display().to_string()),
            _ => None,
        }
    }
}

/// The local listener as a client must be told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// A name for the pg_service.conf section: the endpoint's first label.
    pub service: String,
    /// The listener's TCP address, as clients must dial it.
    pub host: IpAddr,
    pub port: u16,
    /// `--unix-socket DIR`: libpq-based formats use the socket (psql -h DIR).
    pub socket_dir: Option<PathBuf>,
    pub dbname: String,
    /// `--db-user`, when pinned; otherwise the client's own default applies.
    pub user: Option<String>,
    pub tls: ClientTls,
}

impl ClientSettings {
    pub fn from_config(config: &Config, dbname: &str) -> Result<ClientSettings, ConnectInfoError> {
        let addr = config.listen.address;
        if addr.port() == 0 {
            return Err(ConnectInfoError::RandomPort);
        }
        if dbname.is_empty() {
            return Err(ConnectInfoError::EmptyDbname);
        }
        // A listener on every address is reached on loopback from this machine.
        let host = match addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let service: String = config
            .endpoint
            .split('.')
            .next()
            .unwrap_or("rds")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        Ok(ClientSettings {
            service: if service.is_empty() { "rds".into() } else { service },
            host,
            port: addr.port(),
            socket_dir: config.listen.unix_socket_dir.clone(),
            dbname: dbname.to_owned(),
            user: config.db_user.clone(),
            tls: match &config.local_tls {
                None => ClientTls::Disable,
                Some(LocalTlsConfig::Files { .. }) => ClientTls::Require,
                Some(LocalTlsConfig::Generated { ca_cert }) => ClientTls::VerifyFull {
                    ca: ca_cert.clone(),
                },
            },
        })
    }

    /// The settings in `format`, ending with a newline.
    pub fn render(&self, format: ConnectInfoFormat) -> String {
        match format {
            ConnectInfoFormat::Psql => format!("psql {}\n", rds_auth_proxy_protocol::shell::quote(&self.conninfo())),
            ConnectInfoFormat::Dsn => format!("{}\n", self.uri()),
            ConnectInfoFormat::Jdbc => format!("{}\n", self.jdbc()),
            ConnectInfoFormat::Dbeaver => self.dbeaver(),
            ConnectInfoFormat::PgService => self.pg_service(),
            ConnectInfoFormat::Env => self.env(),
        }
    }

    /// libpq's keyword/value pairs, in the order a person reads them. TLS settings only for TCP:
    /// libpq does not use TLS on a Unix socket.
    fn libpq_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("host", self.libpq_host()),
            ("port", self.port.to_string()),
            ("dbname", self.dbname.clone()),
        ];
        if let Some(user) = &self.user {
            pairs.push(("user", user.clone()));
        }
        if self.socket_dir.is_none() {
            pairs.push(("sslmode", self.tls.sslmode().to_owned()));
            if let Some(ca) = self.tls.root_cert() {
                pairs.push(("sslrootcert", ca));
            }
        }
        pairs
    }

    fn libpq_host(&self) -> String {
        match &self.socket_dir {
            Some(dir) => dir.display().to_string(),
            None => self.host.to_string(),
        }
    }

    /// `host=… port=…` with libpq's quoting: values with spaces, quotes or backslashes in '…'.
    pub fn conninfo(&self) -> String {
        self.libpq_pairs()
            .iter()
            .map(|(k, v)| format!("{k}={}", conninfo_quote(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A `postgresql://` URI; a Unix socket goes in the `host` parameter.
    pub fn uri(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{}@", utf8_percent_encode(u, COMPONENT)))
            .unwrap_or_default();
        let db = utf8_percent_encode(&self.dbname, COMPONENT);
        let mut query: Vec<(&str, String)> = Vec::new();
        let authority = match &self.socket_dir {
            Some(dir) => {
                query.push(("host", dir.display().to_string()));
                query.push(("port", self.port.to_string()));
                user.to_string()
            }
            None => format!("{user}{}:{}", url_host(self.host), self.port),
        };
        if self.socket_dir.is_none() {
            query.push(("sslmode", self.tls.sslmode().to_owned()));
            if let Some(ca) = self.tls.root_cert() {
                query.push(("sslrootcert", ca));
            }
        }
        format!("postgresql://{authority}/{db}{}", query_string(&query))
    }

    /// A pgJDBC URL (always TCP: Java has no Unix sockets without extra libraries).
    pub fn jdbc(&self) -> String {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(user) = &self.user {
            query.push(("user", user.clone()));
        }
        query.push(("sslmode", self.tls.sslmode().to_owned()));
        if let Some(ca) = self.tls.root_cert() {
            query.push(("sslrootcert", ca));
        }
        format!(
            "jdbc:postgresql://{}:{}/{}{}",
            url_host(self.host),
            self.port,
            utf8_percent_encode(&self.dbname, COMPONENT),
            query_string(&query)
        )
    }

    /// DBeaver's connection dialog, field by field (it runs pgJDBC, so TCP).
    pub fn dbeaver(&self) -> String {
        let ssl = match &self.tls {
            ClientTls::Disable => "  SSL tab: Use SSL: off\n".to_owned(),
            ClientTls::Require => "  SSL tab: Use SSL: on, SSL mode: require\n".to_owned(),
            ClientTls::VerifyFull { ca } => format!(
                "  SSL tab: Use SSL: on, Root certificate: {}, SSL mode: verify-full\n",
                ca.display()
            ),
        };
        format!(
            "DBeaver: Database > New Database Connection > PostgreSQL\n\
             \x20 Connect by: Host\n\
             \x20 Host: {host}\n\
             \x20 Port: {port}\n\
             \x20 Database: {db}\n\
             \x20 Authentication: Database Native\n\
             \x20 Username: {user}\n\
             \x20 Password: (leave empty; rds-auth-proxy answers the password request)\n\
             {ssl}",
            host = self.host,
            port = self.port,
            db = self.dbname,
            user = self.user.as_deref().unwrap_or("(your database user)"),
        )
    }

    /// A section for `~/.pg_service.conf` (or the file in `PGSERVICEFILE`).
    pub fn pg_service(&self) -> String {
        let mut out = format!(
            "# add to ~/.pg_service.conf, then: psql service={name}\n[{name}]\n",
            name = self.service
        );
        for (k, v) in self.libpq_pairs() {
            out.push_str(&format!("{k}={v}\n"));
        }
        out
    }

    /// `export PG…=…` lines for a POSIX shell: `eval "$(rds-auth-proxy connect-info --format env)"`.
    pub fn env(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.libpq_pairs() {
            let name = match k {
                "host" => "PGHOST",
                "port" => "PGPORT",
                "dbname" => "PGDATABASE",
                "user" => "PGUSER",
                "sslmode" => "PGSSLMODE",
                "sslrootcert" => "PGSSLROOTCERT",
                _ => continue,
            };
            out.push_str(&format!("export {name}={}\n", rds_auth_proxy_protocol::shell::quote(&v)));
        }
        out
    }
}

/// Everything but unreserved characters is percent-encoded in a user, database or query value.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn query_string(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let joined: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, COMPONENT)))
        .collect();
    format!("?{}", joined.join("&"))
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn conninfo_quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '\t', '\n']) {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn settings(flags: &[&str]) -> ClientSettings {
        let mut argv = vec!["rds-auth-proxy", "--target", "mydb.abc123.eu-central-1.rds.amazonaws.com"];
        argv.extend_from_slice(flags);
        let config = Config::from_args(&Cli::try_parse_from(argv).unwrap().proxy).unwrap();
        ClientSettings::from_config(&config, "postgres").unwrap()
    }

    #[test]
    fn every_format_plain() {
        let s = settings(&["--db-user", "db_user"]);
        assert_eq!(
            s.render(ConnectInfoFormat::Psql),
            "psql 'host=127.0.0.1 port=6543 dbname=postgres user=db_user sslmode=disable'\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::Dsn),
            "postgresql://db_user@127.0.0.1:6543/postgres?sslmode=disable\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::Jdbc),
            "jdbc:postgresql://127.0.0.1:6543/postgres?user=db_user&sslmode=disable\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::Dbeaver),
            "DBeaver: Database > New Database Connection > PostgreSQL\n\
             \x20 Connect by: Host\n\
             \x20 Host: 127.0.0.1\n\
             \x20 Port: 6543\n\
             \x20 Database: postgres\n\
             \x20 Authentication: Database Native\n\
             \x20 Username: db_user\n\
             \x20 Password: (leave empty; rds-auth-proxy answers the password request)\n\
             \x20 SSL tab: Use SSL: off\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::PgService),
            "# add to ~/.pg_service.conf, then: psql service=mydb\n[mydb]\nhost=127.0.0.1\nport=6543\n\
             dbname=postgres\nuser=db_user\nsslmode=disable\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::Env),
            "export PGHOST=127.0.0.1\nexport PGPORT=6543\nexport PGDATABASE=postgres\nexport PGUSER=db_user\n\
             export PGSSLMODE=disable\n"
        );
    }

    #[test]
    fn local_tls_socket_ipv6_and_odd_names() {
        let s = settings(&["--local-tls", "--local-tls-ca-out", "/home/u/my certs/ca.pem", "-p", "7000", "--db-user", "a b"]);
        assert_eq!(
            s.render(ConnectInfoFormat::Psql),
            "psql 'host=127.0.0.1 port=7000 dbname=postgres user='\\''a b'\\'' sslmode=verify-full sslrootcert='\\''/home/u/my certs/ca.pem'\\'''\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::Dsn),
            "postgresql://a%20b@127.0.0.1:7000/postgres?sslmode=verify-full&sslrootcert=%2Fhome%2Fu%2Fmy%20certs%2Fca.pem\n"
        );
        assert_eq!(
            s.render(ConnectInfoFormat::Jdbc),
            "jdbc:postgresql://127.0.0.1:7000/postgres?user=a%20b&sslmode=verify-full&sslrootcert=%2Fhome%2Fu%2Fmy%20certs%2Fca.pem\n"
        );
        assert!(s
            .render(ConnectInfoFormat::Dbeaver)
            .ends_with("  SSL tab: Use SSL: on, Root certificate: /home/u/my certs/ca.pem, SSL mode: verify-full\n"));
        assert!(s.render(ConnectInfoFormat::Env).ends_with(
            "export PGSSLMODE=verify-full\nexport PGSSLROOTCERT='/home/u/my certs/ca.pem'\n"
        ));

        let v6 = settings(&["-a", "::1"]);
        assert_eq!(v6.render(ConnectInfoFormat::Dsn), "postgresql://[::1]:6543/postgres?sslmode=disable\n");
        assert_eq!(v6.render(ConnectInfoFormat::Jdbc), "jdbc:postgresql://[::1]:6543/postgres?sslmode=disable\n");
        assert!(v6.render(ConnectInfoFormat::Dbeaver).contains("  Username: (your database user)\n"));

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let sock = settings(&["--unix-socket", d, "--db-user", "u"]);
        assert_eq!(sock.render(ConnectInfoFormat::Psql), format!("psql 'host={d} port=6543 dbname=postgres user=u'\n"));
        assert_eq!(
            sock.render(ConnectInfoFormat::Dsn),
            format!("postgresql://u@/postgres?host={}&port=6543\n", utf8_percent_encode(d, COMPONENT))
        );
        // JDBC and DBeaver stay on TCP.
        assert_eq!(sock.render(ConnectInfoFormat::Jdbc), "jdbc:postgresql://127.0.0.1:6543/postgres?user=u&sslmode=disable\n");
    }

    #[test]
    fn refusals() {
        let config = Config::from_args(
            &Cli::try_parse_from(["rds-auth-proxy", "--target", "db.x", "-p", "0"]).unwrap().proxy,
        )
        .unwrap();
        assert_eq!(ClientSettings::from_config(&config, "postgres"), Err(ConnectInfoError::RandomPort));
        let config = Config::from_args(&Cli::try_parse_from(["rds-auth-proxy", "--target", "db.x"]).unwrap().proxy).unwrap();
        assert_eq!(ClientSettings::from_config(&config, ""), Err(ConnectInfoError::EmptyDbname));
    }
}
