/**
 * One figure of `npm run bench`: a measured value next to a baseline measured in the same run.
 * Bench modules may return the older shape {name, value, unit, baseline, baselineName}; the runner
 * accepts both through normalizeRow (higher is better unless said otherwise).
 */
export interface Row {
  group: string;
  name: string;
  value: number;
  unit: string;
  baseline: number;
  baselineName: string;
  higherIsBetter: boolean;
  /** The target as written in the issue, e.g. ">= 2x" (compared against the ratio), or "<= 10 KiB" (against the value). */
  target?: string;
  /** Whether the target is met; undefined when there is no target. */
  met?: boolean;
  /** Short remark printed under the table (e.g. which side's CPU was saturated). */
  note?: string;
}

/** The shape bench modules written before Row had a group and direction may return. */
export interface LegacyRow {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  baselineName: string;
  group?: string;
  higherIsBetter?: boolean;
  target?: string;
  met?: boolean;
  note?: string;
}

export function normalizeRow(r: LegacyRow, group: string): Row {
  return {
    ...r,
    group: r.group ?? group,
    higherIsBetter: r.higherIsBetter ?? true,
  };
}

/** value/baseline when higher is better, baseline/value when lower is better: above 1 means ours wins. */
export function ratioOf(r: Row): number {
  if (!(r.value > 0) || !(r.baseline > 0)) return Number.NaN;
  return r.higherIsBetter ? r.value / r.baseline : r.baseline / r.value;
}
