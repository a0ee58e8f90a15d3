//! Distinguished names (certificate subjects) compared regardless of order and case: checked in the
//! configuration, matched by the TLS layer.

/// A distinguished name as a sorted list of (attribute in upper case, value), for comparison
/// regardless of order, spaces around separators and attribute-name case.
pub fn dn_parts(dn: &str) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = dn.chars();
    let mut push = |cur: &mut String| {
        let item = std::mem::take(cur);
        if let Some((k, v)) = item.split_once('=') {
            parts.push((k.trim().to_ascii_uppercase(), v.trim().to_string()));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    // Escaped '=' stays escaped so that split_once only sees the separator.
                    if n == '=' {
                        cur.push('\u{1}');
                    } else {
                        cur.push(n);
                    }
                }
            }
            ',' | '+' => push(&mut cur),
            _ => cur.push(c),
        }
    }
    push(&mut cur);
    let mut parts: Vec<(String, String)> = parts
        .into_iter()
        .map(|(k, v)| (k, v.replace('\u{1}', "=")))
        .collect();
    parts.sort();
    parts
}

/// True when `dn` is a distinguished name with at least one `attribute=value` part.
pub fn is_dn(dn: &str) -> bool {
    !dn_parts(dn).is_empty()
}
