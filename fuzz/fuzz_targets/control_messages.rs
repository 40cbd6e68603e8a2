//! The control plane's protobuf conversions (control/src/convert.rs) on what a peer sends.
//!
//! The bytes are decoded as a `ClientFrame` (what the daemon receives) and as a `ServerFrame`
//! (what the client receives), and as the nested message its first byte picks (an Entry, a
//! Listing, Params, ... without the enclosing frames, so mutations reach every field's range);
//! every `*_from_pb` conversion runs on what decodes. Checks (in control/src/fuzz.rs): never
//! panics; accepted paths hold `RelPath`'s promises; an accepted Listing's entries are direct
//! children of its directory; sizes fit an off_t; what is accepted survives a round trip
//! through our own encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blitx_control::fuzz::client_frame(data);
    blitx_control::fuzz::server_frame(data);
    blitx_control::fuzz::message(data);
    blitx_control::fuzz::remote_reply(data);
});
