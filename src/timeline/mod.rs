//! The key lifecycle as a picture (`simulate --svg`, `keys timeline`, the
//! admin listener's `/status`): [`spans`] turns stored keys into bars and
//! marks on a time axis, [`svg`] draws them.

pub mod spans;
pub mod svg;

pub use spans::{Bar, Group, Mark, MarkKind, Phase, Timeline};
