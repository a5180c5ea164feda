//! What the config and policy loaders share: how a TOML syntax error is
//! located in its file.

/// 1-based line and column of a toml error, and its message: shared with
/// the config loader so both report syntax errors the same way.
pub fn toml_position(text: &str, err: &toml::de::Error) -> (usize, usize, String) {
    let (line, column) = match err.span() {
        Some(span) => {
            // `get` rather than slicing: never panic on a span off a char boundary.
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        }
        None => (1, 1),
    };
    (line, column, err.message().trim().to_owned())
}
