//! The subject of a client certificate as an RFC 4514 string (`CN=alice,O=Example`),
//! read from the certificate's DER with just enough of a DER reader to walk to the
//! subject Name. rustls has verified the certificate; this only formats it.

/// One DER element: (tag, contents, the rest after it).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject of a DER certificate, or None when it cannot be read.
pub fn subject(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = element(cert)? else {
        return None;
    };
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, mut name, _) = element(tbs)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, rest) = element(name)? else {
            return None;
        };
        name = rest;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, pair, rest) = element(set)? else {
                return None;
            };
            set = rest;
            let (OID, oid, value) = element(pair)? else {
                return None;
            };
            let (tag, text, _) = element(value)?;
            parts.push(attribute(oid, tag, text, value));
        }
        rdns.push(parts.join("+"));
    }
    // RFC 4514: the last RDN of the sequence comes first.
    rdns.reverse();
    Some(rdns.join(","))
}

/// `NAME=value`, or `OID=#hex` for an attribute without a short name or a string value.
fn attribute(oid: &[u8], tag: u8, text: &[u8], der: &[u8]) -> String {
    let name = match oid {
        [0x55, 0x04, n] => match n {
            3 => Some("CN"),
            6 => Some("C"),
            7 => Some("L"),
            8 => Some("ST"),
            9 => Some("STREET"),
            10 => Some("O"),
            11 => Some("OU"),
            5 => Some("serialNumber"),
            _ => None,
        },
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => Some("emailAddress"),
        _ => None,
    };
    let value = match tag {
        // UTF8String, PrintableString, IA5String, NumericString.
        12 | 19 | 22 | 18 => std::str::from_utf8(text).ok().map(str::to_owned),
        // TeletexString, read as latin-1 as most software does.
        20 => Some(text.iter().map(|&b| b as char).collect()),
        // BMPString: UCS-2.
        30 => char::decode_utf16(
            text.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        _ => None,
    };
    match (name, value) {
        (Some(name), Some(value)) => format!("{name}={}", escape(&value)),
        _ => {
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}=#{hex}", dotted(oid))
        }
    }
}

/// RFC 4514 2.4: the special characters, a leading `#` or space, a trailing space.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An OID's dotted form.
fn dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for b in oid {
        value = (value << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (value / 40).min(2);
                parts.push(first.to_string());
                parts.push((value - first * 40).to_string());
            } else {
                parts.push(value.to_string());
            }
            value = 0;
        }
    }
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_in_rfc4514_order_with_escapes() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "NL");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("CN=alice,O=Example\\, Inc.,C=NL")
        );
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(subject(b""), None);
        assert_eq!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject(&[0x30, 0x03, 0x30, 0x01]), None);
        assert_eq!(dotted(&[0x2a, 0x86, 0x48]), "1.2.840");
    }
}
