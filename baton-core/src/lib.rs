//! Hardware-free logic shared by the baton guest kernel and the hypervisor shim.
#![cfg_attr(not(test), no_std)]
