// Zeroes the weights whose mask entry is non-zero: out = mask != 0 ? 0 : w.

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let total = info[0];
    let i = (wid.y * nwg.x + wid.x) * {{ workgroup_size }}u + lid;
    if (i >= total) {
        return;
    }
    var v = w[i];
    if (mask[i] != 0.0) {
        v = 0.0;
    }
    out[i] = v;
}
