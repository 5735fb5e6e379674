//! Named limits of the contract (DESIGN.md), with the unit last in each name.
//!
//! The filter-language limits are fixed by the contract. The event and frame limits are
//! defaults: servers may configure them through [`Limits`].

/// Longest topic or pattern, in bytes.
pub const TOPIC_BYTES_MAX: usize = 256;
/// Longest filter text, in bytes.
pub const FILTER_BYTES_MAX: usize = 4096;
/// Most predicates in one filter.
pub const FILTER_PREDICATES_MAX: usize = 64;
/// Deepest nesting of `(`…`)` groups and `!`/`not` in one filter.
pub const FILTER_NESTING_MAX: usize = 16;
/// Most literals in one `in [...]` list.
pub const FILTER_IN_ITEMS_MAX: usize = 256;
/// Compiled-size bound of one regex (`regex::RegexBuilder::size_limit`), in bytes.
pub const REGEX_COMPILED_BYTES_MAX: usize = 256 * 1024;
/// Lazy-DFA cache bound of one regex (`regex::RegexBuilder::dfa_size_limit`), in bytes.
pub const REGEX_DFA_BYTES_MAX: usize = 1024 * 1024;

/// Default largest event payload, in bytes (1 MiB).
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Default most attributes on one event.
pub const ATTRS_MAX: usize = 64;
/// Default longest attribute name, in bytes.
pub const ATTR_NAME_BYTES_MAX: usize = 128;
/// Default longest string attribute value, in bytes (4 KiB).
pub const ATTR_STRING_BYTES_MAX: usize = 4096;
/// Default largest encoded frame, in bytes: a full payload plus a full attribute set plus slack.
pub const FRAME_BYTES_MAX: usize = 1536 * 1024;

/// Default subscription lease, in milliseconds (60 s).
pub const LEASE_DEFAULT_MS: u64 = 60_000;
/// Longest subscription lease or time to a hard deadline, in milliseconds (24 h).
pub const LEASE_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// Configurable limits for events and frames; every field has the unit last.
///
/// `Limits::default()` gives the contract's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest event payload, in bytes. Bounds: 0 ..= `frame_bytes_max`.
    pub payload_bytes_max: usize,
    /// Most attributes on one event.
    pub attrs_max: usize,
    /// Longest attribute name, in bytes.
    pub attr_name_bytes_max: usize,
    /// Longest string attribute value, in bytes.
    pub attr_string_bytes_max: usize,
    /// Largest encoded frame, in bytes; the decoder refuses longer frames before allocating.
    pub frame_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            payload_bytes_max: PAYLOAD_BYTES_MAX,
            attrs_max: ATTRS_MAX,
            attr_name_bytes_max: ATTR_NAME_BYTES_MAX,
            attr_string_bytes_max: ATTR_STRING_BYTES_MAX,
            frame_bytes_max: FRAME_BYTES_MAX,
        }
    }
}
