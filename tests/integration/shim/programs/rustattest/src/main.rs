//! rustattest PORT USER_DATA NONCE: an attestation document from /dev/nsm through
//! aws-nitro-enclaves-nsm-api's driver (nsm_init, nsm_process_request: open + ioctl), served
//! over AF_VSOCK (libc's socket/bind/listen/accept, statically linked musl) as a 4-byte
//! big-endian length and the COSE_Sign1 document.
use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;
use std::io::Write;

fn fail(what: &str) -> ! {
    println!("{}-FAILED {}", what, std::io::Error::last_os_error());
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u32 = args[1].parse().expect("port");
    let fd = nsm_init();
    if fd < 0 {
        fail("OPEN");
    }
    let request = Request::Attestation {
        user_data: Some(ByteBuf::from(args[2].as_bytes().to_vec())),
        nonce: Some(ByteBuf::from(args[3].as_bytes().to_vec())),
        public_key: None,
    };
    let document = match nsm_process_request(fd, request) {
        Response::Attestation { document } => document,
        other => {
            println!("IOCTL-FAILED {:?}", other);
            std::process::exit(1)
        }
    };
    nsm_exit(fd);
    unsafe {
        let listener = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0);
        if listener < 0 {
            fail("SOCKET");
        }
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        let size = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        if libc::bind(listener, &addr as *const _ as *const libc::sockaddr, size) != 0 {
            fail("BIND");
        }
        if libc::listen(listener, 4) != 0 {
            fail("LISTEN");
        }
        println!("LISTENING {}", port);
        std::io::stdout().flush().ok();
        loop {
            let mut peer: libc::sockaddr_vm = std::mem::zeroed();
            let mut peer_len = size;
            let conn = libc::accept(listener, &mut peer as *mut _ as *mut libc::sockaddr, &mut peer_len);
            if conn < 0 {
                fail("ACCEPT");
            }
            let mut out = (document.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&document);
            libc::write(conn, out.as_ptr() as *const libc::c_void, out.len());
            println!("SERVED {}:{}", peer.svm_cid, peer.svm_port);
            std::io::stdout().flush().ok();
            libc::close(conn);
        }
    }
}
