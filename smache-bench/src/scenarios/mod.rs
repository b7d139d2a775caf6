//! The scenarios of issue 6, one module a group.

pub(crate) mod cluster;
pub(crate) mod fanout;
pub(crate) mod flight;
pub(crate) mod hits;
pub(crate) mod layer;
pub(crate) mod memory;
pub(crate) mod miss;
pub(crate) mod refresh;
pub(crate) mod refresher;
pub(crate) mod spread;
