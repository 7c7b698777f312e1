//! The local AWS simulator: everything the tests, `rds-auth-proxy sim` and `demo` use instead of
//! AWS. Real protocols on loopback, never mock objects: a TLS "RDS front" that checks IAM tokens
//! as IAM would ([`rds`], [`sigv4`]), in front of a real throwaway PostgreSQL ([`postgres`]), with
//! a CA generated per run ([`certs`]), and the SSM API plus the agent side of the port-forwarding
//! data channel ([`ssm`]), and Secrets Manager's GetSecretValue ([`secrets`]), STS ([`sts`]) and
//! the IAM Identity Center portal ([`sso`]), whose temporary credentials every part accepts.
//! Besides RDS, an Aurora DSQL front ([`dsql`], its control plane [`dsql_api`]) and a Redshift
//! front for a provisioned cluster and a Serverless workgroup ([`redshift`]), whose passwords
//! the simulated Redshift APIs issue ([`redshift_api`]; JSON services share [`json_api`]), all
//! on the same PostgreSQL.
//! [`runner`] starts them together; [`cli`] holds the flags of the binary's `sim` and `demo`
//! commands.
//!
//! Its own crate, not a module of the proxy: the product library ships no simulator code. It
//! speaks the proxy's wire code from `rds_auth_proxy_protocol` and never depends on the proxy.

#![forbid(unsafe_code)]

pub mod certs;
pub mod cli;
pub mod dsql;
pub mod dsql_api;
pub mod json_api;
pub mod postgres;
pub mod query;
pub mod rds;
pub mod rds_api;
pub mod redshift;
pub mod redshift_api;
pub mod runner;
pub mod secrets;
pub mod sigv4;
pub mod sso;
pub mod sts;
pub mod ssm;

pub use runner::{
    SimOptions, Simulator, SIM_DSQL_CLUSTER, SIM_DSQL_ENDPOINT, SIM_DSQL_PORT, SIM_REDSHIFT_CLUSTER, SIM_REDSHIFT_DB,
    SIM_REDSHIFT_ENDPOINT, SIM_REDSHIFT_PORT, SIM_REDSHIFT_SERVERLESS_ENDPOINT, SIM_REDSHIFT_USER, SIM_REDSHIFT_WORKGROUP,
    SIM_REDSHIFT_WORKGROUP_ID,
};
