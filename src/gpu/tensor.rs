//! Tensors between the host and a device, whatever the backend: dtype casts, reading values
//! back, and dtype names.

use burn::tensor::{DType, Tensor};

use crate::io::error::Result;
use crate::{bail, err};

/// `t` in `dtype` (unchanged when it already is).
pub fn to_dtype<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// Reads a tensor back to the host as f32; a failed readback is an error naming `what`, never
/// an empty vector.
pub fn host_f32<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let n = t.shape().num_elements();
    let t = to_dtype(t, DType::F32);
    let data = t.try_into_data().map_err(|e| {
        err!(
            "{what}: reading the result back from the device failed: {}",
            crate::io::error::device_words(&e.to_string())
        )
    })?;
    let v = data.try_into_vec::<f32>().map_err(|e| {
        err!("{what}: the device returned unreadable data: {}", crate::io::error::one_line(&e.to_string()))
    })?;
    if v.len() != n {
        bail!("{what}: the device returned {} values, expected {n}", v.len());
    }
    Ok(v)
}

/// The report's name of a compute dtype.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}
