import Config

config :automata_signal,
  regions: ["nrt", "fra", "syd"],
  primary_region: "nrt"
