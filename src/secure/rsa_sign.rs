//! RSA identities: SSHSIG signatures with `rsa-sha2-512` (RFC 8332), made with RustCrypto's
//! `rsa` crate directly. ssh-key 0.6.7 cannot sign with RSA keys: its conversion to
//! `rsa::RsaPrivateKey` passes the prime `p` twice instead of `p` and `q`. Here the private key
//! is built from all of its components and checked before use.

use sha2::Digest;
use ssh_key::private::RsaKeypair;
use ssh_key::{Algorithm, HashAlg, Mpint, PublicKey, Signature, SshSig};

fn big(m: &Mpint) -> Result<rsa::BigUint, String> {
    m.as_positive_bytes()
        .map(rsa::BigUint::from_bytes_be)
        .ok_or_else(|| "a negative RSA component".to_string())
}

/// An SSHSIG by `keypair` (whose public half is `public`) over `message` in `namespace`, with
/// SHA-512 as both the message hash and the RSA signature hash.
pub(crate) fn sshsig(
    keypair: &RsaKeypair,
    public: &PublicKey,
    namespace: &str,
    message: &[u8],
) -> Result<SshSig, String> {
    let key = rsa::RsaPrivateKey::from_components(
        big(&keypair.public.n)?,
        big(&keypair.public.e)?,
        big(&keypair.private.d)?,
        vec![big(&keypair.private.p)?, big(&keypair.private.q)?],
    )
    .map_err(|e| e.to_string())?;
    key.validate().map_err(|e| e.to_string())?;
    let data =
        SshSig::signed_data(namespace, HashAlg::Sha512, message).map_err(|e| e.to_string())?;
    let digest = sha2::Sha512::digest(&data);
    let raw = key
        .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &digest)
        .map_err(|e| e.to_string())?;
    let signature = Signature::new(
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        raw,
    )
    .map_err(|e| e.to_string())?;
    SshSig::new(
        public.key_data().clone(),
        namespace,
        HashAlg::Sha512,
        signature,
    )
    .map_err(|e| e.to_string())
}
