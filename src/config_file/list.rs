//! `--list-targets`: one line per target, as a table.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::Plan;
use crate::config::{Config, ViaConfig};

/// `--list-targets`: one line per target — name, listener, endpoint, route.
pub fn describe(plan: &Plan) -> String {
    let mut rows = rows(&plan.targets);
    for p in &plan.pending {
        let a = &p.args;
        let endpoint = match (&a.db_instance, &a.db_cluster, &a.target) {
            (Some(db), _, _) => format!("(DB instance {db})"),
            (_, Some(c), _) if a.reader => format!("(reader of DB cluster {c})"),
            (_, Some(c), _) => format!("(DB cluster {c})"),
            (_, _, Some(t)) => t.clone(),
            _ => match (&a.dsql_cluster, &a.redshift_cluster, &a.redshift_workgroup) {
                (Some(id), _, _) => format!("(Aurora DSQL cluster {id})"),
                (_, _, Some(w)) => format!("(Redshift Serverless workgroup {w})"),
                (_, Some(c), _) => format!("(Redshift cluster {c})"),
                _ => String::new(),
            },
        };
        let via = match a.via {
            crate::cli::Via::Direct => "direct".to_owned(),
            crate::cli::Via::Ssm => format!("ssm {} (up to {} sessions)", a.ssm_target.as_deref().unwrap_or("?"), a.ssm_sessions),
        };
        let name = p.name.clone().unwrap_or_else(|| endpoint.clone());
        rows.push([name, SocketAddr::new(a.address, a.port).to_string(), endpoint, via]);
    }
    table(rows)
}

fn rows(targets: &[Config]) -> Vec<[String; 4]> {
    targets
        .iter()
        .map(|c| {
            let mut listen = c.listen.address.to_string();
            if let Some(dir) = &c.listen.unix_socket_dir {
                let _ = write!(listen, " + {}", dir.join(format!(".s.PGSQL.{}", c.listen.address.port())).display());
            }
            let via = match &c.via {
                ViaConfig::Direct { connect_addr } if *connect_addr == format!("{}:{}", c.endpoint, c.port) => "direct".to_owned(),
                ViaConfig::Direct { connect_addr } => format!("direct to {connect_addr}"),
                ViaConfig::Ssm(ssm) => format!("ssm {} (up to {} sessions)", ssm.node, ssm.sessions),
            };
            [c.name.clone(), listen, format!("{}:{}", c.endpoint, c.port), via]
        })
        .collect()
}

fn table(rows: Vec<[String; 4]>) -> String {
    let header = ["NAME", "LISTEN", "ENDPOINT", "VIA"].map(str::to_owned);
    let mut widths = [0; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
