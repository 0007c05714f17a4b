//! The vhost-user glue: a [`VhostUserBackend`] for a virtio-fs device whose queues carry FUSE
//! requests, served by a [`FuseServer`].
//!
//! A virtio-fs device has a high-priority queue (FORGET and INTERRUPT) and request queues. Each
//! request is one descriptor chain: device-readable descriptors hold the request, writable ones
//! receive the reply. This file only turns chains into bytes and back; what a request means is
//! `server.rs`'s business.

use std::io::{self, Read as _, Write as _};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::server::FuseServer;

/// The high-priority queue and one request queue (QEMU's `num-request-queues` default).
pub const NUM_QUEUES: usize = 2;
/// Largest queue the frontend may configure.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Largest request accepted: the largest write (`max_write` offered in INIT) plus room for the
/// headers. A chain offering more is answered with nothing rather than buffered.
pub const MAX_REQUEST: usize = ferry_protocol::MAX_DATA + 64 * 1024;

/// What went wrong while serving a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A kick arrived before the frontend set up guest memory.
    #[error("no guest memory configured")]
    NoMemory,
    /// The avail ring or a descriptor chain could not be read.
    #[error("bad descriptor chain: {0}")]
    Chain(virtio_queue::Error),
    /// Reading the request or writing the reply to guest memory failed.
    #[error("guest memory access: {0}")]
    Memory(io::Error),
    /// An event this backend never registered.
    #[error("unexpected event {0}")]
    UnknownEvent(u16),
}

impl From<QueueError> for io::Error {
    fn from(e: QueueError) -> Self {
        io::Error::other(e)
    }
}

thread_local! {
    /// The request buffer of a vring worker thread (see `serve_available`).
    static REQUEST: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The virtio-fs backend of one vhost-user connection.
#[derive(Clone)]
pub struct VhostUserFs {
    server: Arc<FuseServer>,
    mem: Arc<Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>>,
    event_idx: Arc<std::sync::atomic::AtomicBool>,
}

impl VhostUserFs {
    /// A backend answering with `server`.
    pub fn new(server: Arc<FuseServer>) -> Self {
        VhostUserFs {
            server,
            mem: Arc::default(),
            event_idx: Arc::default(),
        }
    }

    /// Serves every available chain of `vring`, notifying the guest as the ring asks.
    pub fn process_queue(&self, vring: &VringRwLock) -> Result<(), QueueError> {
        let event_idx = self.event_idx.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(QueueError::Chain)?;
            }
            let served = self.serve_available(vring)?;
            if served > 0 {
                let notify = !event_idx || vring.needs_notification().map_err(QueueError::Chain)?;
                if notify {
                    vring.signal_used_queue().map_err(QueueError::Memory)?;
                }
            }
            if !event_idx || !vring.enable_notification().map_err(QueueError::Chain)? {
                return Ok(());
            }
        }
    }

    /// Serves the chains available now; returns how many.
    fn serve_available(&self, vring: &VringRwLock) -> Result<usize, QueueError> {
        let atomic = self
            .mem
            .lock()
            .unwrap()
            .clone()
            .ok_or(QueueError::NoMemory)?;
        let mem = atomic.memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(QueueError::Chain)?
            .collect();
        for chain in &chains {
            let head = chain.head_index();
            let mut reader = Reader::new(&*mem, chain.clone()).map_err(QueueError::Chain)?;
            if reader.available_bytes() > MAX_REQUEST {
                tracing::warn!(
                    bytes = reader.available_bytes(),
                    "virtio-fs: dropped a request larger than any FUSE request"
                );
                vring.add_used(head, 0).map_err(QueueError::Chain)?;
                continue;
            }
            // One request buffer per queue thread, kept between requests: a 1 MiB WRITE
            // neither allocates nor zero-fills again.
            let reply = REQUEST.with_borrow_mut(|request| {
                let len = reader.available_bytes();
                if request.len() < len {
                    request.resize(len, 0);
                }
                reader
                    .read_exact(&mut request[..len])
                    .map_err(QueueError::Memory)?;
                Ok::<_, QueueError>(self.server.handle(&request[..len]))
            })?;
            let written = match reply {
                Some(reply) => {
                    let mut writer =
                        Writer::new(&*mem, chain.clone()).map_err(QueueError::Chain)?;
                    if reply.len() > writer.available_bytes() {
                        tracing::warn!(
                            reply = reply.len(),
                            room = writer.available_bytes(),
                            "virtio-fs: reply larger than the guest's buffers"
                        );
                        0
                    } else {
                        writer.write_all(&reply).map_err(QueueError::Memory)?;
                        reply.len() as u32
                    }
                }
                None => 0,
            };
            vring.add_used(head, written).map_err(QueueError::Chain)?;
        }
        Ok(chains.len())
    }
}

impl VhostUserBackend for VhostUserFs {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// One worker thread per queue: FORGETs on the high-priority queue are served beside the
    /// requests, not between them. A FORGET can be the last reference to a file the guest
    /// removed, and the host frees its blocks then (some 100 us on ext4 for a small file);
    /// the guest waits for no FORGET, so that work overlaps its next requests. The export
    /// core takes concurrent calls (the FUSE agent serves with several threads too).
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..NUM_QUEUES).map(|q| 1 << q).collect()
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.lock().unwrap() = Some(mem);
        Ok(())
    }

    /// A fresh exit event per vring worker: the daemon's epoll handler keeps the notifier and
    /// writes it when the connection ends (`VringEpollHandler::send_exit_event`), which stops
    /// that worker. (vhost-user-backend 0.24 keeps the consumer's descriptor registered in the
    /// worker's epoll set without closing it: one descriptor per worker per frontend
    /// connection, which a VM's lifetime of reconnects does not exhaust.)
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!(error = %e, "virtio-fs: no exit event for a vring worker");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or(QueueError::UnknownEvent(device_event))?;
        self.process_queue(vring)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtiofs::abi::{self, opcode};
    use crate::virtiofs::server::tests::{request, server};
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use zerocopy::{FromBytes, IntoBytes};

    const REQ_ADDR: u64 = 0x10_0000;
    const REPLY_ADDR: u64 = 0x20_0000;

    /// Puts `req` on a fresh request queue in in-memory guest memory, runs the backend over
    /// it and returns the used length and the reply bytes.
    fn round_trip(backend: &VhostUserFs, req: &[u8], reply_room: u32) -> (u32, Vec<u8>) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        );
        backend.update_memory(mem.clone()).unwrap();
        let m = mem.memory();
        m.write_slice(req, GuestAddress(REQ_ADDR)).unwrap();
        let vq = MockSplitQueue::new(&*m, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                REQ_ADDR,
                req.len() as u32,
                virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                REPLY_ADDR,
                reply_room,
                virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let vring = VringRwLock::new(mem.clone(), 16).unwrap();
        vring
            .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
            .unwrap();
        vring.set_queue_ready(true);
        backend.process_queue(&vring).unwrap();
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(vq.used().idx().load(), 1);
        let mut reply = vec![0u8; used.len() as usize];
        m.read_slice(&mut reply, GuestAddress(REPLY_ADDR)).unwrap();
        (used.len(), reply)
    }

    #[test]
    fn lookup_through_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"12345").unwrap();
        let backend = VhostUserFs::new(Arc::new(server(dir.path(), false)));
        let (len, reply) = round_trip(
            &backend,
            &request(opcode::LOOKUP, 5, 1, &[b"hello\0"]),
            4096,
        );
        assert_eq!(len, 16 + 128);
        let (h, body) = abi::OutHeader::read_from_prefix(&reply).unwrap();
        assert_eq!((h.error, h.unique, h.len), (0, 5, 144));
        let e = abi::EntryOut::read_from_bytes(body).unwrap();
        assert_eq!(e.attr.size, 5);
    }

    #[test]
    fn forget_uses_the_chain_without_a_reply() {
        let dir = tempfile::tempdir().unwrap();
        let backend = VhostUserFs::new(Arc::new(server(dir.path(), false)));
        let f = abi::ForgetIn { nlookup: 1 };
        let (len, _) = round_trip(
            &backend,
            &request(opcode::FORGET, 1, 2, &[f.as_bytes()]),
            64,
        );
        assert_eq!(len, 0);
    }

    #[test]
    fn a_reply_too_big_for_the_buffers_is_dropped_not_written_past() {
        let dir = tempfile::tempdir().unwrap();
        let backend = VhostUserFs::new(Arc::new(server(dir.path(), false)));
        let (len, _) = round_trip(&backend, &request(opcode::LOOKUP, 1, 1, &[b".\0"]), 8);
        assert_eq!(len, 0);
    }

    #[test]
    fn an_oversized_request_is_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let backend = VhostUserFs::new(Arc::new(server(dir.path(), false)));
        let huge = vec![0u8; MAX_REQUEST + 1];
        let (len, _) = round_trip(&backend, &huge, 64);
        assert_eq!(len, 0);
    }

    #[test]
    fn a_kick_before_memory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let backend = VhostUserFs::new(Arc::new(server(dir.path(), false)));
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
        );
        let vring = VringRwLock::new(mem, 16).unwrap();
        assert!(matches!(
            backend.process_queue(&vring),
            Err(QueueError::NoMemory)
        ));
    }
}
