//! Error chains as text: one error and every `source` under it, each thing said once, for a log
//! line or the one line the command prints. Below every module that reports an error.

/// An error with its whole source chain, for one log line.
pub fn display_chain(err: &dyn std::error::Error) -> String {
    with_sources(err.to_string(), err.source())
}

/// `head`, then `source` and each of its sources after ": ".
pub fn with_sources(head: String, source: Option<&dyn std::error::Error>) -> String {
    let mut s = head;
    let mut cur = source;
    while let Some(e) = cur {
        // Many errors (the AWS SDK's among them) repeat their source in their own text, or wrap
        // an error of the same words once more: a link already said adds nothing.
        let text = e.to_string();
        if !text.is_empty() && !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Link(&'static str, Option<Box<Link>>);
    impl std::fmt::Display for Link {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Link {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    /// The AWS SDK's SSO failure as it comes: the provider error wrapped twice, the exception
    /// once more inside its operation error. Each thing is said once.
    #[test]
    fn a_chain_says_each_link_once() {
        let chain = Link("could not load AWS credentials", Some(Box::new(Link(
            "an error occurred while loading credentials",
            Some(Box::new(Link("an error occurred while loading credentials", Some(Box::new(Link(
                "service error",
                Some(Box::new(Link(
                    "UnauthorizedException: Session token not found or invalid",
                    Some(Box::new(Link("Session token not found or invalid", None))),
                ))),
            )))))),
        ))));
        assert_eq!(
            display_chain(&chain),
            "could not load AWS credentials: an error occurred while loading credentials: service error: \
             UnauthorizedException: Session token not found or invalid"
        );
    }
}
