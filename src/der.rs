//! The little DER the proxy reads itself: three fixed paths into an X.509 certificate (a client
//! certificate's subject CN, a bundle certificate's notAfter, a server certificate's signature
//! algorithm for SCRAM channel binding). A full X.509 crate would cost more build time than
//! these few lines; every length is checked and anything unexpected is `None`, never a panic.

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const OID: u8 = 0x06;

/// One DER element: its tag, its contents and what follows it. Lengths take the short form or
/// the long form with 1 to 4 length bytes (a certificate is far below 4 GiB).
pub fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (bytes.iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The contents of the next element if it has `tag`, and what follows it.
pub fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_form_lengths() {
        assert_eq!(element(&[0x02, 0x01, 0x05, 0xff]), Some((0x02, &[0x05][..], &[0xff][..])));
        assert_eq!(element(&[0x04, 0x00]), Some((0x04, &[][..], &[][..])));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([0xab; 0x80]);
        assert_eq!(element(&long), Some((0x04, &[0xab; 0x80][..], &[][..])));
        let mut two = vec![0x30, 0x82, 0x01, 0x00];
        two.extend([0; 0x100]);
        two.push(0x07);
        assert_eq!(element(&two).map(|(t, c, r)| (t, c.len(), r)), Some((0x30, 0x100, &[0x07][..])));
    }

    #[test]
    fn truncated_or_oversized_lengths_are_none() {
        assert_eq!(element(&[]), None);
        assert_eq!(element(&[0x30]), None);
        assert_eq!(element(&[0x30, 0x02, 0x00]), None, "contents shorter than the length");
        assert_eq!(element(&[0x30, 0x80]), None, "indefinite length is not DER");
        assert_eq!(element(&[0x30, 0x85, 1, 0, 0, 0, 0]), None, "more than 4 length bytes");
        assert_eq!(element(&[0x30, 0x82, 0x01]), None, "length bytes cut short");
        assert_eq!(element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn expect_checks_the_tag() {
        assert_eq!(expect(&[0x31, 0x01, 0x00, 0x09], SET), Some((&[0x00][..], &[0x09][..])));
        assert_eq!(expect(&[0x31, 0x01, 0x00], SEQUENCE), None);
    }
}
