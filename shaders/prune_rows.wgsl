// Magnitude or Wanda pruning of each row of a weight w [rows, cols] in one shader: the score of
// w[r, j] is |w| (magnitude) or |w| * sqrt(scaler[j]) (Wanda), recomputed wherever it is read
// and never stored; the k[r] lowest scores of row r (ties: lower column first, or higher where
// info[2] is 1) are zeroed in `out` and, when info[4] asks (the final prune; NeuroAL's search
// needs only the weights), marked 1.0 in `mask` (the rest 0.0). The arithmetic is that of score.wgsl, then
// select_lowest.wgsl, then apply_mask.wgsl, which move a score matrix and a mask through memory
// between three launches. `w` and `out` are in the compute dtype ({{ elem }}), read and
// written as they are stored; scores are f32. One workgroup per row, with the selection of
// row_select.wgsl.
{{ enable }}
@group(0) @binding(0) var<storage, read_write> w: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> scaler: array<f32>;
@group(0) @binding(2) var<storage, read_write> kth: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> info: array<u32>;

// Whether the score multiplies by sqrt(scaler) (Wanda), and whether the mask is written, set by
// main.
var<private> use_scaler: u32;
var<private> write_mask: u32;

{{ row_select }}

// The key of the score of column j, the score as score.wgsl computes it.
fn key_at(base: u32, j: u32) -> u32 {
    var s = abs(f32(w[base + j]));
    if (use_scaler == 1u) {
        s = s * sqrt(scaler[j]);
    }
    return key_of(s);
}

fn write_at(base: u32, j: u32, pruned: bool) {
    if (pruned) {
        out[base + j] = {{ elem }}(0.0);
    } else {
        out[base + j] = w[base + j];
    }
    if (write_mask == 1u) {
        mask[base + j] = select(0.0, 1.0, pruned);
    }
}

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    use_scaler = info[3];
    write_mask = info[4];
    select_workgroup_row(wid, nwg, lid);
}
