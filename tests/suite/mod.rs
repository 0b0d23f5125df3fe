mod build;
mod crash;
mod hostile;
mod pipeline;
mod remote;
mod report;
