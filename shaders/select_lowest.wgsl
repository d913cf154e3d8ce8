// In each row of a [rows, cols] score matrix, marks the k[row] lowest scores with 1.0 (ties:
// lower column first, or higher where info[2] is 1) and the rest with 0.0: one workgroup per
// row, with the selection of row_select.wgsl.

@group(0) @binding(0) var<storage, read_write> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> kth: array<u32>;
@group(0) @binding(2) var<storage, read_write> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

{{ row_select }}

fn key_at(base: u32, j: u32) -> u32 {
    return key_of(scores[base + j]);
}

fn write_at(base: u32, j: u32, pruned: bool) {
    mask[base + j] = select(0.0, 1.0, pruned);
}

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    select_workgroup_row(wid, nwg, lid);
}
