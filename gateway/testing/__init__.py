"""What adapter authors and our own tests share: real servers on loopback, faithful fake
upstreams, and the contract suite every adapter must pass."""
