// A ranking of the answers shown side by side, by their position on screen (0-based), and
// the random order they are shown in. No DOM here, so that it can be checked on its own.

/** A uniformly random permutation of 0..n-1 (Fisher–Yates, with the browser's CSPRNG). */
export function shuffledOrder(n) {
  const order = Array.from({ length: n }, (_, i) => i);
  const random = new Uint32Array(n);
  crypto.getRandomValues(random);
  for (let i = n - 1; i > 0; i--) {
    const j = random[i] % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/**
 * Best first, in tie groups: `pick(p)` puts answer `p` in a new group after the others,
 * `tie(p)` into the last group, `flagUnusable(p)` toggles it out of the ranking. Answers the
 * user left out follow the ranked ones as one tie group (one answer ranked best of three
 * says the other two are worse, not which of them is).
 */
export class Ranking {
  constructor(size) {
    this.size = size;
    this.groups = [];
    this.unusable = new Set();
  }

  get touched() {
    return this.groups.length > 0 || this.unusable.size > 0;
  }

  #remove(position) {
    this.groups = this.groups.map((g) => g.filter((p) => p !== position)).filter((g) => g.length);
    this.unusable.delete(position);
  }

  pick(position) {
    this.#remove(position);
    this.groups.push([position]);
  }

  tie(position) {
    this.#remove(position);
    if (this.groups.length === 0) this.groups.push([]);
    this.groups[this.groups.length - 1].push(position);
  }

  flagUnusable(position) {
    const wasUnusable = this.unusable.has(position);
    this.#remove(position);
    if (!wasUnusable) this.unusable.add(position);
  }

  reset() {
    this.groups = [];
    this.unusable.clear();
  }

  /** The tie groups to send: the ranked ones, then the rest as one group. */
  complete() {
    const placed = new Set([...this.groups.flat(), ...this.unusable]);
    const rest = [...Array(this.size).keys()].filter((p) => !placed.has(p));
    return rest.length ? [...this.groups, rest] : [...this.groups];
  }

  /** 1-based place of each position ("1", "=2", "unusable"), for the cards' badges. */
  places() {
    const result = new Map();
    this.groups.forEach((group, index) => {
      for (const p of group) result.set(p, group.length > 1 ? `=${index + 1}` : `${index + 1}`);
    });
    for (const p of this.unusable) result.set(p, "unusable");
    return result;
  }

  /** "2 = 3 > 1 · unusable: 4" with 1-based positions. */
  describe() {
    const groups = this.complete().map((g) => g.map((p) => p + 1).join(" = "));
    const unusable = [...this.unusable].map((p) => p + 1).sort();
    return groups.join(" > ") + (unusable.length ? ` · unusable: ${unusable.join(", ")}` : "");
  }

  /** The `POST /v1/rankings` fields, from the completion id at each position. */
  toRequest(idAt) {
    return {
      ranking: this.complete().map((g) => (g.length === 1 ? idAt(g[0]) : g.map(idAt))),
      unusable: [...this.unusable].map(idAt),
    };
  }
}
