//! aws-eif-builder KERNEL CMDLINE_FILE OUTPUT RAMDISK... [--sign CERT_PEM KEY_PEM]
//! aws-eif-builder --sign-existing EIF CERT_PEM KEY_PEM
//! aws-eif-builder --describe EIF
//!
//! Builds an EIF with aws-nitro-enclaves-image-format's EifBuilder, the way nitro-cli's
//! enclave_build does (x86_64 flags, Sha384), and prints the crate's own PCRs (get_pcrs) as
//! pretty JSON on stdout. The metadata is fixed so that the output is reproducible.
//! `--sign-existing` signs an EIF in place with the crate's EifSigner::sign_image (what
//! nitro-cli 1.4's sign-eif calls); `--describe` reads one with the crate's EifReader and prints
//! {"Measurements", "CheckCRC", "IsSigned", "SignatureCheck"} as nitro-cli's describe-eif
//! computes them.
use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::{get_pcrs, EifBuilder, EifSigner, SignKeyData};
use sha2::{Digest, Sha384};
use std::fs::{self, OpenOptions};
use std::path::Path;

fn describe(eif: &str) {
    let mut reader = EifReader::from_eif(eif.to_string()).expect("the crate cannot read the EIF");
    let measurements = reader.get_measurements().expect("cannot compute the PCRs");
    let signed = reader.signature_section.is_some();
    if signed {
        reader
            .get_certificate_info(measurements.clone())
            .expect("cannot check the signature");
    }
    let described = serde_json::json!({
        "Measurements": measurements,
        "CheckCRC": reader.check_crc(),
        "IsSigned": signed,
        "SignatureCheck": reader.sign_check,
    });
    println!("{}", serde_json::to_string_pretty(&described).unwrap());
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[0] == "--describe" {
        describe(&args[1]);
        return;
    }
    if args.len() == 4 && args[0] == "--sign-existing" {
        let key_data = SignKeyData::new(&args[3], Path::new(&args[2])).expect("bad signing key data");
        let signer = EifSigner::new(Some(key_data)).expect("no signer");
        signer.sign_image(&args[1]).expect("the crate cannot sign the EIF");
        describe(&args[1]);
        return;
    }
    let mut sign_info = None;
    if let Some(at) = args.iter().position(|a| a == "--sign") {
        let cert = args[at + 1].clone();
        let key = args[at + 2].clone();
        args.drain(at..at + 3);
        sign_info = Some(SignKeyData::new(&key, Path::new(&cert)).expect("bad signing key data"));
    }
    if args.len() < 4 {
        eprintln!("usage: aws-eif-builder KERNEL CMDLINE_FILE OUTPUT RAMDISK... [--sign CERT KEY]");
        std::process::exit(2);
    }
    let cmdline = fs::read_to_string(&args[1]).expect("cannot read the cmdline file");
    let eif_info = EifIdentityInfo {
        img_name: "aws-eif-builder".to_string(),
        img_version: "1.0".to_string(),
        build_info: EifBuildInfo {
            build_time: "2017-04-18T16:30:00Z".to_string(),
            build_tool: "aws-eif-builder".to_string(),
            build_tool_version: "0.1.0".to_string(),
            img_os: "Linux".to_string(),
            img_kernel: "test".to_string(),
        },
        docker_info: serde_json::json!(null),
        custom_info: serde_json::json!(null),
    };
    let mut output = OpenOptions::new()
        .read(true)
        .create(true)
        .write(true)
        .truncate(true)
        .open(&args[2])
        .expect("cannot create the output file");
    let mut build = EifBuilder::new(
        Path::new(&args[0]),
        cmdline,
        sign_info,
        Sha384::new(),
        0, // x86_64
        eif_info,
    );
    for ramdisk in &args[3..] {
        build.add_ramdisk(Path::new(ramdisk));
    }
    build.write_to(&mut output);
    let signed = build.is_signed();
    build.measure();
    let measurements = get_pcrs(
        &mut build.image_hasher,
        &mut build.bootstrap_hasher,
        &mut build.customer_app_hasher,
        &mut build.certificate_hasher,
        Sha384::new(),
        signed,
    )
    .expect("cannot compute the PCRs");
    println!("{}", serde_json::to_string_pretty(&measurements).unwrap());
}
