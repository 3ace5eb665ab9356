"""Encoders: networks that map an image to its latents in one forward pass.

Each encoder lives in its own module here, with its config in `configs/`, and plugs into the
same engine as optimisation, in the two ways encoder-based inversion uses it:
  - as the start: its latents are `init` for `api.invert` / `jobs.invert_folder` (a list of
    `latents.LatentRecord`s or an array), so an encoder alone and encoder + optimisation are
    measured with the same code;
  - as a regulariser: an `engine.LatentTerm` passed as `latent_terms` (idinvert's
    ||w - E(G(w))||^2 keeps the code in the encoder's domain).
"""
