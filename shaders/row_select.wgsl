// The selection that select_lowest.wgsl and prune_rows.wgsl share (each writes {{ row_select }}
// where it goes): in one row of `cols` entries, the k lowest keys, ties to the lower column, with
// one workgroup. An exact radix select finds the k-th smallest key over three digits of 11, 11
// and 10 bits (rows may be far wider than workgroup memory): three passes over the row, and
// scores of similar size, which share their top bits, spread over more counters than 8-bit
// digits give them (atomics on one counter wait for each other). Then a pass over the row hands
// each column its verdict; ties are ranked by column only in the one stretch of the row where
// the pruned ties end. The including shader binds `kth` (the count per row) and `info` (rows,
// cols first), and defines key_at(base, j), the key (key_of of the f32 score) of column j of the
// row starting at `base`, and write_at(base, j, pruned).

const WG: u32 = {{ workgroup_size }}u;
const BINS: u32 = 2048u;
// Counters per invocation when the workgroup sums them (WG divides BINS).
const PER: u32 = BINS / WG;

var<workgroup> hist: array<atomic<u32>, BINS>;
var<workgroup> select_u32: array<u32, 2>;
var<workgroup> flags: array<u32, WG>;

// Order-preserving map of f32 to u32; +0 and -0 share a key, as they compare equal.
fn key_of(x: f32) -> u32 {
    var bits = bitcast<u32>(x);
    if (x == 0.0) {
        bits = 0u;
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

// flags[i] becomes flags[0] + … + flags[i] (Hillis-Steele). Every invocation calls it.
fn inclusive_scan(lid: u32) {
    workgroupBarrier();
    for (var off = 1u; off < WG; off = off * 2u) {
        var add = 0u;
        if (lid >= off) {
            add = flags[lid - off];
        }
        workgroupBarrier();
        flags[lid] = flags[lid] + add;
        workgroupBarrier();
    }
}

// Calls write_at(base, j, pruned) for every column j of the row: pruned for the k lowest keys.
// Every invocation of the workgroup calls it (it holds barriers); `cols` is workgroup-uniform.
fn select_row(base: u32, cols: u32, k: u32, lid: u32) {
    // Radix select: after the three digits, `prefix` is the key of the k-th smallest score and
    // `remaining` how many scores equal to it are pruned.
    var prefix = 0u;
    var digits_mask = 0u;
    var remaining = k;
    for (var digit = 0u; digit < 3u; digit++) {
        // Bits 21-31, then 10-20, then 0-9.
        var width = 11u;
        var shift = 0u;
        if (digit < 2u) {
            shift = 21u - 11u * digit;
        } else {
            width = 10u;
        }
        let bins_mask = (1u << width) - 1u;
        for (var b = lid; b < BINS; b += WG) {
            atomicStore(&hist[b], 0u);
        }
        workgroupBarrier();
        for (var j = lid; j < cols; j += WG) {
            let key = key_at(base, j);
            if ((key & digits_mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & bins_mask], 1u);
            }
        }
        workgroupBarrier();
        // The first counter whose running total reaches `remaining`: each invocation sums its
        // PER counters, the workgroup's prefix sum of those sums says whose stretch holds it,
        // and that invocation walks its own. (k = 0: counter 0, none left.)
        var own = 0u;
        for (var i = 0u; i < PER; i++) {
            own += atomicLoad(&hist[lid * PER + i]);
        }
        flags[lid] = own;
        inclusive_scan(lid);
        let through = flags[lid];
        let before = through - own;
        if (remaining == 0u) {
            if (lid == 0u) {
                select_u32[0] = 0u;
                select_u32[1] = 0u;
            }
        } else if (before < remaining && remaining <= through) {
            var cum = before;
            for (var i = 0u; i < PER; i++) {
                let c = atomicLoad(&hist[lid * PER + i]);
                if (cum + c >= remaining) {
                    select_u32[0] = lid * PER + i;
                    select_u32[1] = remaining - cum;
                    break;
                }
                cum += c;
            }
        } else if (lid == WG - 1u && through < remaining) {
            // Fewer keys than asked for (k is clamped to the row, so not reached): the last
            // counter, all of them.
            select_u32[0] = bins_mask;
            select_u32[1] = remaining;
        }
        let sel = workgroupUniformLoad(&select_u32[0]);
        remaining = workgroupUniformLoad(&select_u32[1]);
        prefix = prefix | (sel << shift);
        digits_mask = digits_mask | (bins_mask << shift);
    }

    // Pruned: below the k-th key, or equal to it (a tie) and among the first `remaining` ties
    // by column. A stretch of WG columns whose ties are all pruned, or none, needs no ranks.
    var ties_before = 0u;
    for (var start = 0u; start < cols; start += WG) {
        let j = start + lid;
        var key = 0u;
        var is_tie = 0u;
        if (j < cols) {
            key = key_at(base, j);
            if (key == prefix) {
                is_tie = 1u;
            }
        }
        if (lid == 0u) {
            atomicStore(&hist[0], 0u);
        }
        workgroupBarrier();
        if (is_tie == 1u) {
            atomicAdd(&hist[0], 1u);
        }
        workgroupBarrier();
        if (lid == 0u) {
            select_u32[0] = atomicLoad(&hist[0]);
        }
        let ties = workgroupUniformLoad(&select_u32[0]);
        var tie_pruned = ties_before + ties <= remaining;
        if (ties_before < remaining && remaining < ties_before + ties) {
            flags[lid] = is_tie;
            inclusive_scan(lid);
            tie_pruned = ties_before + flags[lid] <= remaining;
        }
        if (j < cols) {
            write_at(base, j, k > 0u && (key < prefix || (is_tie == 1u && tie_pruned)));
        }
        ties_before = ties_before + ties;
    }
}

// The whole of a shader's work on the row of this workgroup (one workgroup per row, folded
// into two dimensions): select_row over it, with its count clamped to the row's width.
fn select_workgroup_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let row_id = wid.y * nwg.x + wid.x;
    if (lid == 0u) {
        select_u32[0] = info[0];
        select_u32[1] = info[1];
    }
    let rows = workgroupUniformLoad(&select_u32[0]);
    let cols = workgroupUniformLoad(&select_u32[1]);
    if (row_id >= rows) {
        return;
    }
    // The count through workgroup memory, so that every invocation holds the same value and the
    // selection's barriers stay in uniform control flow.
    if (lid == 0u) {
        select_u32[0] = min(kth[row_id], cols);
    }
    let k = workgroupUniformLoad(&select_u32[0]);
    select_row(row_id * cols, cols, k, lid);
}
