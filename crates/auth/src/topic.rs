//! The three relations an ACL needs between an ACL topic (a filter, possibly with `+` and `#`) and what a client
//! names: a topic matches it, a subscription filter overlaps it, a subscription filter lies wholly inside it.
//! All follow MQTT's rule that a wildcard in the first level does not match a topic starting with `$`
//! [MQTT-4.7.2-1], and that `a/#` matches `a` itself [MQTT-4.7.1-2].

/// Why a string is not usable as an ACL topic.
pub(crate) fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("it is empty");
    }
    if filter.contains('\0') {
        return Err("it contains U+0000");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err("'#' must be the last level"),
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => return Err("'+' and '#' must fill a whole level"),
            _ => {}
        }
    }
    Ok(())
}

/// A first-level wildcard on one side cannot meet a `$` topic on the other.
fn dollar_mismatch(a: &str, b: &str) -> bool {
    (a.starts_with(['+', '#']) && b.starts_with('$')) || (b.starts_with(['+', '#']) && a.starts_with('$'))
}

/// Whether the topic name `topic` matches the filter `filter`: the codec's rule, the one the broker routes by.
pub(crate) use skein_codec::topic::matches;

/// Whether some topic name matches both filters.
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    if dollar_mismatch(a, b) {
        return false;
    }
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Whether every topic name that `inner` matches is also matched by `outer`.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    // A first-level wildcard in `outer` misses `$` topics; a literal `$` level in `outer` misses what a first-level
    // wildcard in `inner` matches (only non-`$` topics), unless `inner` is a literal `$` level too.
    if dollar_mismatch(outer, inner) {
        return false;
    }
    let (mut o, mut i) = (outer.split('/'), inner.split('/'));
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(x), Some(y)) if x == y && x != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        for (filter, topic, want) in [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("+/b", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a//b", "a//b", true),
            ("a/b", "a/b/", false),
        ] {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn overlapping_and_covering() {
        // (acl, subscription filter, overlaps, covers)
        for (acl, sub, o, c) in [
            ("sensors/#", "sensors/+/temp", true, true),
            ("sensors/+/temp", "sensors/#", true, false),
            ("sensors/+/temp", "sensors/+/temp", true, true),
            ("sensors/a/temp", "sensors/+/temp", true, false),
            ("sensors/+", "sensors", false, false),
            ("sensors/#", "sensors", true, true),
            ("sensors", "sensors/#", true, false),
            ("a/b", "c/#", false, false),
            ("#", "#", true, true),
            ("#", "$SYS/#", false, false),
            ("$SYS/#", "#", false, false),
            ("$SYS/#", "$SYS/broker/+", true, true),
            ("+/+", "a/#", true, false),
        ] {
            assert_eq!(overlaps(acl, sub), o, "overlaps({acl}, {sub})");
            assert_eq!(covers(acl, sub), c, "covers({acl}, {sub})");
        }
    }

    #[test]
    fn validation() {
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a+/b").is_err());
        assert!(validate_filter("a/b#").is_err());
        assert!(validate_filter("").is_err());
    }
}
