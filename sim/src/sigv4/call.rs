//! One signed AWS JSON 1.1 call as a simulated service receives it.

use super::*;

/// One AWS JSON 1.1 call as a simulated service receives it: the body, read up to a limit, with
/// its header signature checked for `service` and `region`.
#[derive(Debug)]
pub struct SignedCall {
    /// The `X-Amz-Target` header, e.g. `AmazonSSM.StartSession` (empty when absent).
    pub target: String,
    pub body: bytes::Bytes,
    /// The region of the signature's credential scope.
    pub region: String,
    /// The access key id that signed the call.
    pub access_key_id: String,
}

/// Why [`read_signed_call`] refused a request; each simulated API maps it to its own error.
#[derive(Debug)]
pub enum SignedCallError {
    /// The body could not be read, or is larger than the limit.
    Body,
    Signature(SignatureRejection),
    /// Signed correctly, but for another region than the service's.
    WrongRegion,
}

/// Reads and authenticates one signed JSON 1.1 request (the part every simulated API shares).
pub async fn read_signed_call(
    request: http::Request<hyper::body::Incoming>,
    max_body: usize,
    service: &str,
    creds: &SimCredentials,
    region: &str,
) -> Result<SignedCall, SignedCallError> {
    let call = read_signed_call_any_region(request, max_body, service, creds).await?;
    if call.region != region {
        return Err(SignedCallError::WrongRegion);
    }
    Ok(call)
}

/// [`read_signed_call`] for a service that accepts any region's scope (STS) or checks it itself.
pub async fn read_signed_call_any_region(
    request: http::Request<hyper::body::Incoming>,
    max_body: usize,
    service: &str,
    creds: &SimCredentials,
) -> Result<SignedCall, SignedCallError> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let body = http_body_util::Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|_| SignedCallError::Body)?
        .to_bytes();
    let verified = verify_header_signed_request(&parts, &body, service, creds, SystemTime::now())
        .map_err(SignedCallError::Signature)?;
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(SignedCall {
        target,
        body,
        region: verified.region,
        access_key_id: verified.access_key_id,
    })
}
