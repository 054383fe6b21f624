//! Flows: identity ([`FlowKey`]), sequence arithmetic ([`Seq`]), per-direction reassembly
//! ([`Reassembler`]) and the bounded flow table that drives a [`StreamHandler`] per connection.
//! Pure: time is passed in, nothing here logs or touches the clock.

mod key;
mod reassembly;
mod seq;
mod table;

pub use key::{FlowKey, Side};
pub use reassembly::{
    DataMeta, Reassembler, ReassemblyConfig, ReassemblyStats, SegmentIn, StreamEvent,
};
pub use seq::Seq;
pub use table::{
    CloseReason, FlowConfig, FlowStats, FlowTable, MAX_VNI_STATS, OTHER_VNI, StreamHandler,
    vni_entry,
};
