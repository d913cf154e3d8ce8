// Neuron alignment of one linear's input norms, dense a and sparse b (length n):
// out[0] = ‖a/Σa − b/Σb‖₂ / n, and d = a − b. One workgroup: strided partial sums reduced in
// workgroup memory, twice (the sums, then the squared differences). Each thread's partial sum is
// compensated (Kahan), so the result stays within ~1e-7 of an exact computation on long rows.

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const WG: u32 = {{ workgroup_size }}u;

var<workgroup> part_a: array<f32, {{ workgroup_size }}>;
var<workgroup> part_b: array<f32, {{ workgroup_size }}>;
var<workgroup> len_shared: u32;

fn reduce(lid: u32) {
    for (var off = WG / 2u; off > 0u; off = off / 2u) {
        if (lid < off) {
            part_a[lid] = part_a[lid] + part_a[lid + off];
            part_b[lid] = part_b[lid] + part_b[lid + off];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        len_shared = info[0];
    }
    let n = workgroupUniformLoad(&len_shared);
    var sa = 0.0;
    var ca = 0.0;
    var sb = 0.0;
    var cb = 0.0;
    for (var j = lid; j < n; j += WG) {
        let ya = a[j] - ca;
        let ta = sa + ya;
        ca = (ta - sa) - ya;
        sa = ta;
        let yb = b[j] - cb;
        let tb = sb + yb;
        cb = (tb - sb) - yb;
        sb = tb;
        d[j] = a[j] - b[j];
    }
    part_a[lid] = sa;
    part_b[lid] = sb;
    workgroupBarrier();
    reduce(lid);
    let total_a = workgroupUniformLoad(&part_a[0]);
    let total_b = workgroupUniformLoad(&part_b[0]);
    var sq = 0.0;
    var cq = 0.0;
    for (var j = lid; j < n; j += WG) {
        let diff = a[j] / total_a - b[j] / total_b;
        let y = diff * diff - cq;
        let t = sq + y;
        cq = (t - sq) - y;
        sq = t;
    }
    workgroupBarrier();
    part_a[lid] = sq;
    part_b[lid] = 0.0;
    workgroupBarrier();
    reduce(lid);
    if (lid == 0u) {
        out[0] = sqrt(part_a[0]) / f32(n);
    }
}
