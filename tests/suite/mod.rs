mod build;
mod pipeline;
