// Pruning scores of a weight w [rows, cols]: |w| (magnitude) or |w| * sqrt(scaler[col])
// (Wanda, scaler = per-channel sum of squares of the input over tokens, divided by N).

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> scaler: array<f32>;
@group(0) @binding(2) var<storage, read_write> score: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let total = info[0];
    let cols = info[1];
    let use_scaler = info[2];
    let i = (wid.y * nwg.x + wid.x) * {{ workgroup_size }}u + lid;
    if (i >= total) {
        return;
    }
    var s = abs(w[i]);
    if (use_scaler == 1u) {
        s = s * sqrt(scaler[i % cols]);
    }
    score[i] = s;
}
