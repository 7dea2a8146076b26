/**
 * Perceptual colour maps (polynomial fits of matplotlib's viridis and inferno) as 256-entry RGB tables.
 * Used by the token-stack heatmap (`stack.ts`) and the spectrogram (`signal.ts`).
 */

type Coefficients = [number, number, number][];

const VIRIDIS: Coefficients = [
  [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
  [0.1050930431085774, 1.404613529898575, 1.384590162594685],
  [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
  [-4.634230498983486, -5.799100973351585, -19.33244095627987],
  [6.228269936347081, 14.17993336680509, 56.69055260068105],
  [4.776384997670288, -13.74514537774601, -65.35303263337234],
  [-5.435455855934631, 4.645852612178535, 26.3124352495832],
];

const INFERNO: Coefficients = [
  [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
  [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
  [11.60249308247187, -3.972853965665698, -15.9423941062914],
  [-41.70399613139459, 17.43639888205313, 44.35414519872813],
  [77.162935699427, -33.40235894210092, -81.80730925738993],
  [-71.31942824499214, 32.62606426397723, 73.20951985803202],
  [25.13112622477341, -12.24266895238567, -23.07032500287172],
];

function table(coefficients: Coefficients): Uint8Array {
  const out = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    for (let channel = 0; channel < 3; channel++) {
      let value = 0;
      for (let power = coefficients.length - 1; power >= 0; power--) value = value * t + coefficients[power][channel];
      out[i * 3 + channel] = Math.round(255 * Math.min(1, Math.max(0, value)));
    }
  }
  return out;
}

export const viridis = table(VIRIDIS);
export const inferno = table(INFERNO);
